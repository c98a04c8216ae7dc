-- wrk script: POST one fixed chat-completion JSON body to /v1/chat/completions.
--
-- The body comes from the first script argument (wrk ... -- '<json>') or, failing
-- that, from the WRK_CHAT_BODY environment variable; with neither, a small
-- non-streaming request is sent. The request is built once per wrk thread (in
-- init) and reused, so the script adds no per-request Lua work.
--
--   WRK_CHAT_BODY='{"model":"m","messages":[{"role":"user","content":"hi"}]}' \
--     wrk -t2 -c32 -d10s --latency -s bench/wrk_chat.lua http://127.0.0.1:30000
--
-- Non-2xx answers are counted by wrk itself ("Non-2xx or 3xx responses").

local DEFAULT_BODY = '{"model":"bench-model","messages":[{"role":"user",'
  .. '"content":"Say something about caches."}],"max_tokens":16}'

wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"

function init(args)
  local body = args[1]
  if body == nil or body == "" then
    body = os.getenv("WRK_CHAT_BODY")
  end
  if body == nil or body == "" then
    body = DEFAULT_BODY
  end
  wrk.body = body
end

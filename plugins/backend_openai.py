"""The ``openai`` backend type: any OpenAI-compatible server (vLLM, llama.cpp, a provider)."""

from inferegator.plugin import BackendAdapter, hookimpl

_PATHS = {"chat": "/chat/completions", "completions": "/completions",
          "embeddings": "/embeddings", "responses": "/responses"}


class OpenAIBackend(BackendAdapter):
    """``url`` is the API base including /v1, e.g. https://api.example.com/v1."""

    type_name = "openai"
    paths = _PATHS

    def __init__(self, config, model_id: str, resilience=None):
        super().__init__(config, model_id, resilience)
        self._auth = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}

    def health_url(self) -> str:
        return self.url + "/models"

    def auth_headers(self) -> dict:
        return self._auth


@hookimpl(trylast=True)
def inferegator_register_backends():
    return {"openai": OpenAIBackend}

"""A tiny llama-architecture GGUF model with seeded random weights, made by the tests.

llama.cpp (llama-cpp-python) loads it and generates from it in milliseconds on a CPU: 2
layers, 64-wide, a 300-token SentencePiece-style vocabulary (``<unk>``, ``<s>``, ``</s>``,
the 256 byte tokens ``<0x00>``..``<0xFF>`` and some word pieces) and a ChatML chat
template, so that /v1/chat/completions works too. About 0.5 MB, written with the ``gguf``
package; nothing is downloaded.

The weights are random except for one thing: dimension 0 of every token's embedding is
large and each output row's weight on it acts as a bias, so the model prefers printable
word pieces and letters and never picks ``</s>`` or a control or non-ASCII byte token:
every answer is readable text that runs to ``max_tokens`` (finish_reason "length").
"""

import string

import numpy as np

N_EMBD = 64
N_LAYERS = 2
N_HEADS = 4
N_FF = 128
N_CTX_TRAIN = 512

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

_WORDS = ("the", "a", "tiny", "model", "says", "hello", "world", "token", "gateway", "llama",
          "stream", "of", "and", "to", "is", "it", "ok", "yes", "no", "more", "text", "cat",
          "dog", "sun", "sky", "red", "blue", "green", "one", "two", "three", "four", "five",
          "six", "seven", "eight", "nine", "ten", "up", "down")
UNK, BOS, EOS = 0, 1, 2


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types (gguf.TokenType values) of the SPM-style vocab."""
    from gguf import TokenType

    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    pieces = ["\u2581"] + ["\u2581" + w for w in _WORDS]
    tokens += pieces
    types += [TokenType.NORMAL] * len(pieces)
    # SentencePiece merges the pair whose merged piece has the highest score; longer
    # pieces score higher so that whole words win.
    scores = [0.0] * (3 + 256) + [float(len(p)) for p in pieces]
    return tokens, scores, [int(t) for t in types]


def _output_bias(tokens: list[str]) -> np.ndarray:
    """+1 for word pieces and printable ASCII letters/space bytes, -1 for everything else."""
    printable = {ord(c) for c in string.ascii_letters + " .,"}
    bias = np.full(len(tokens), -1.0, dtype=np.float32)
    for i, token in enumerate(tokens):
        if token.startswith("\u2581"):
            bias[i] = 1.0
        elif token.startswith("<0x") and int(token[3:5], 16) in printable:
            bias[i] = 0.5
    return bias


def write_tiny_gguf(path, seed: int = 1234) -> str:
    """Write the model to ``path`` (a .gguf file name) and return the path as a string."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens, scores, types = vocabulary()
    n_vocab = len(tokens)

    def weights(*shape, scale=0.08):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("inferegator-tiny-test")
    writer.add_context_length(N_CTX_TRAIN)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYERS)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEADS)
    writer.add_head_count_kv(N_HEADS)
    writer.add_rope_dimension_count(N_EMBD // N_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(n_vocab)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    # numpy shapes are (rows, columns) = (out, in); GGUF stores them reversed.
    embeddings = weights(n_vocab, N_EMBD, scale=0.3)
    embeddings[:, 0] = 8.0  # a near-constant direction that survives to the last norm
    writer.add_tensor("token_embd.weight", embeddings)
    for layer in range(N_LAYERS):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{block}.{name}.weight", weights(N_EMBD, N_EMBD))
        writer.add_tensor(f"{block}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{block}.ffn_gate.weight", weights(N_FF, N_EMBD))
        writer.add_tensor(f"{block}.ffn_up.weight", weights(N_FF, N_EMBD))
        writer.add_tensor(f"{block}.ffn_down.weight", weights(N_EMBD, N_FF))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    output = weights(n_vocab, N_EMBD, scale=0.5)
    output[:, 0] = _output_bias(tokens) * 4.0  # the bias: favoured tokens by a wide margin
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


if __name__ == "__main__":  # python -m tests.support.tiny_gguf OUT.gguf
    import sys

    print(write_tiny_gguf(sys.argv[1] if len(sys.argv) > 1 else "tiny.gguf"))

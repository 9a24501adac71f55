"""The batched slot-cache runner must produce the checkpoint's own logits."""
import pytest
import torch

from server.engines.torch.hf_runner import HFRunner
from server.engines.torch.slot_runner import SlotRunner, supports

transformers = pytest.importorskip("transformers")


def _model(kind="llama"):
    torch.manual_seed(0)
    common = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if kind == "qwen3":
        cfg = transformers.Qwen3Config(head_dim=16, **common)
        model = transformers.Qwen3ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**common)
        model = transformers.LlamaForCausalLM(cfg)
    return model.eval()


def _reference(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
@pytest.mark.parametrize("runner_cls", [SlotRunner, HFRunner])
def test_prefill_and_ragged_batched_decode_match_reference(kind, runner_cls):
    model = _model(kind)
    assert supports(model)
    runner = runner_cls(model, slots=4, max_len=64, device=torch.device("cpu"), dtype=torch.float32)
    prompts = {3: [5, 9, 2, 44, 7], 1: [11, 12], 0: [90, 1, 2, 3, 4, 5, 6, 7, 8]}
    seqs = {slot: list(p) for slot, p in prompts.items()}
    # Ragged prompts prefilled together in one padded pass.
    got = runner.prefill(list(prompts), list(prompts.values()))
    for row, p in enumerate(prompts.values()):
        torch.testing.assert_close(got[row], _reference(model, p)[-1], atol=1e-4, rtol=1e-4)
    # Three decode steps of a ragged batch (different lengths, non-contiguous slots).
    for step in range(3):
        slots = sorted(seqs)
        toks = [(7 * slot + step) % 97 for slot in slots]
        logits = runner.decode(slots, toks, [len(seqs[s]) for s in slots])
        for row, slot in enumerate(slots):
            seqs[slot].append(toks[row])
            torch.testing.assert_close(logits[row], _reference(model, seqs[slot])[-1], atol=1e-4, rtol=1e-4)


def test_copy_slot_shares_a_prefilled_prompt():
    model = _model()
    runner = SlotRunner(model, slots=3, max_len=32, device=torch.device("cpu"), dtype=torch.float32)
    prompt = [4, 8, 15, 16, 23, 42]
    runner.prefill([0], [prompt])
    runner.copy_slot(0, 2, len(prompt))
    logits = runner.decode([0, 2], [1, 2], [len(prompt), len(prompt)])
    torch.testing.assert_close(logits[0], _reference(model, prompt + [1])[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], _reference(model, prompt + [2])[-1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
@pytest.mark.parametrize("runner_cls", [SlotRunner, HFRunner])
def test_chunked_prefill_matches_reference_and_decodes_on(kind, runner_cls):
    model = _model(kind)
    runner = runner_cls(model, slots=3, max_len=64, device=torch.device("cpu"), dtype=torch.float32)
    prompt = [(11 * i + 3) % 97 for i in range(23)]
    runner.prefill([0], [[1, 2, 3]])  # another sequence's cache must not leak in
    for start in range(0, len(prompt), 8):  # chunks of 8, 8, 7
        got = runner.extend(2, prompt[start:start + 8], start)
        assert got.shape == (1, 97)
        torch.testing.assert_close(got[0], _reference(model, prompt[:start + 8])[-1], atol=1e-4, rtol=1e-4)
    logits = runner.decode([2], [5], [len(prompt)])
    torch.testing.assert_close(logits[0], _reference(model, prompt + [5])[-1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("runner_cls", [SlotRunner, HFRunner])
def test_runners_use_the_current_cache_api_without_deprecation_warnings(runner_cls):
    """transformers 5.2x deprecates `past_key_values` for `cache`: no warning from a runner."""
    import warnings

    runner = runner_cls(_model("qwen3"), slots=2, max_len=64, device=torch.device("cpu"), dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runner.prefill([0], [[5, 9, 2]])
        runner.extend(0, [4, 4], 3)
        runner.decode([0], [7], [5])


def _reference_with(model, ids, splice):
    """Logits of the prompt with `splice.features` in place of the embeddings at its positions."""
    with torch.no_grad():
        emb = model.get_input_embeddings()(torch.tensor([ids]))
        emb[0, splice.positions] = splice.features
        return model(inputs_embeds=emb).logits[0].float()


@pytest.mark.parametrize("runner_cls", [SlotRunner, HFRunner])
def test_media_features_replace_their_placeholders_whole_or_chunked(runner_cls):
    from server.engines.torch.multimodal import MediaSplice

    model = _model()
    placeholder = 96  # stands for an image token
    prompt = [5, 9] + [placeholder] * 6 + [2, 44, 7, 3]
    splice = MediaSplice(torch.arange(2, 8), torch.randn(6, 64, generator=torch.Generator().manual_seed(1)))
    expected = _reference_with(model, prompt, splice)
    assert not torch.allclose(expected[-1], _reference(model, prompt)[-1], atol=1e-3)  # the features matter
    runner = runner_cls(model, slots=3, max_len=64, device=torch.device("cpu"), dtype=torch.float32)
    got = runner.prefill([0, 1], [[1, 2, 3], prompt], [None, splice])  # batched beside a text prompt
    torch.testing.assert_close(got[1], expected[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[0], _reference(model, [1, 2, 3])[-1], atol=1e-4, rtol=1e-4)
    for start in range(0, len(prompt), 5):  # chunk borders inside the placeholders: 5, 5, 2
        got = runner.extend(2, prompt[start:start + 5], start, splice)
        torch.testing.assert_close(got[0], _reference_with(model, prompt[:start + 5], MediaSplice(
            splice.positions[splice.positions < start + 5], splice.features[splice.positions < start + 5]))[-1],
            atol=1e-4, rtol=1e-4)
    logits = runner.decode([2], [5], [len(prompt)])
    with torch.no_grad():
        emb = model.get_input_embeddings()(torch.tensor([prompt + [5]]))
        emb[0, splice.positions] = splice.features
        torch.testing.assert_close(logits[0], model(inputs_embeds=emb).logits[0, -1].float(), atol=1e-4, rtol=1e-4)

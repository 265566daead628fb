"""Chat formatting, loss masking, batching and the masked SFT loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from posttrain.core.data import IGNORE_INDEX, Example, chat_example, chat_prompt_ids, collate, text_example
from posttrain.core.train import masked_sft_loss

GREETING = ("hello !", "hi , how can i help you today ?")


def test_tiny_chat_template_renders_bos_user_asst_eos(world_tokenizer):
    user, assistant = GREETING
    prompt = world_tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    full = world_tokenizer.apply_chat_template(
        [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], tokenize=False
    )
    assert prompt == "<bos><user> hello ! <asst> "
    assert full == "<bos><user> hello ! <asst> hi , how can i help you today ? <eos> "


def test_chat_example_masks_exactly_the_prompt(world_tokenizer):
    example = chat_example(world_tokenizer, *GREETING)
    tokens = world_tokenizer.convert_ids_to_tokens(example.input_ids)
    assert tokens == ["<bos>", "<user>", "hello", "!", "<asst>", *GREETING[1].split(), "<eos>"]
    n_prompt = tokens.index("<asst>") + 1
    assert n_prompt == len(chat_prompt_ids(world_tokenizer, GREETING[0])) == 5
    assert example.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert example.labels[n_prompt:] == example.input_ids[n_prompt:]
    assert example.labels[-1] == world_tokenizer.eos_token_id
    assert IGNORE_INDEX not in example.labels[n_prompt:]


def test_chat_example_with_a_qwen2_style_chatml_template(chatml_tokenizer):
    tok = chatml_tokenizer
    example = chat_example(tok, "hello !", "hi there")
    n_prompt = example.labels.count(IGNORE_INDEX)
    assert example.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert tok.decode(example.input_ids[:n_prompt]) == "<|im_start|>user\nhello !<|im_end|>\n<|im_start|>assistant\n"
    # The loss covers the answer, the end-of-turn token and the newline ChatML writes after it.
    assert tok.decode(example.labels[n_prompt:]) == "hi there<|im_end|>\n"
    assert example.labels[n_prompt:] == example.input_ids[n_prompt:]
    assert tok.convert_tokens_to_ids("<|im_end|>") in example.labels


def test_template_whose_prompt_is_not_a_prefix_is_rejected(world_tokenizer):
    world_tokenizer.chat_template = world_tokenizer.chat_template.replace(
        "{% if add_generation_prompt %}<asst> {% endif %}", "{% if add_generation_prompt %}<asst> <asst> {% endif %}"
    )
    with pytest.raises(ValueError, match="prefix"):
        chat_example(world_tokenizer, *GREETING)


def test_text_example_trains_on_every_token(world_tokenizer):
    example = text_example(world_tokenizer, "ada stone paris baker red .")
    tokens = world_tokenizer.convert_ids_to_tokens(example.input_ids)
    assert tokens == ["<bos>", "ada", "stone", "paris", "baker", "red", ".", "<eos>"]
    assert example.labels == example.input_ids


def test_collate_right_pads_with_pad_id_and_mask():
    batch = collate([Example([5, 6, 7], [IGNORE_INDEX, 6, 7]), Example([8, 9], [IGNORE_INDEX, 9])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, 9, IGNORE_INDEX]]
    assert all(t.dtype == torch.long for t in batch.values())


def _hand_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of -log p(label[t + 1] | logits[t]) over the positions whose next label is not ignored."""
    terms = []
    for b in range(logits.size(0)):
        for t in range(logits.size(1) - 1):
            target = int(labels[b, t + 1])
            if target != IGNORE_INDEX:
                terms.append(-torch.log_softmax(logits[b, t].double(), dim=-1)[target])
    return torch.stack(terms).mean()


def test_masked_sft_loss_matches_a_hand_computation():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=generator)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 1, 6], [IGNORE_INDEX, 2, IGNORE_INDEX, 0, IGNORE_INDEX]])
    loss = masked_sft_loss(logits, labels)
    assert loss.shape == ()
    torch.testing.assert_close(loss.double(), _hand_loss(logits, labels), atol=1e-6, rtol=0)

    # Positions that predict an ignored label, and the last position (which predicts nothing), do not count.
    changed = logits.clone()
    changed[0, 0] += 100.0  # predicts labels[0, 1], ignored
    changed[1, 1] -= 50.0  # predicts labels[1, 2], ignored
    changed[:, -1] = 0.0  # predicts past the end
    assert torch.equal(masked_sft_loss(changed, labels), loss)
    changed[0, 1, 0] += 1.0  # predicts labels[0, 2] = 3, counted
    assert not torch.equal(masked_sft_loss(changed, labels), loss)


def test_masked_sft_loss_without_mask_is_plain_next_token_cross_entropy():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 6, 11, generator=generator)
    labels = torch.randint(0, 11, (3, 6), generator=generator)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(masked_sft_loss(logits, labels), expected)
    torch.testing.assert_close(masked_sft_loss(logits, labels).double(), _hand_loss(logits, labels), atol=1e-6, rtol=0)

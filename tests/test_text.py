from clip4clip_dali.data.text import Tokenizer


def test_original_format():
    tok = Tokenizer(max_words=8)
    ids, mask = tok(["A man is playing a guitar on the stage tonight", "hi"])
    assert ids.shape == mask.shape == (2, 8)
    assert ids[0, 0] == tok.sot and ids[0, -1] == tok.eot
    assert mask[0].tolist() == [1] * 8
    # SOT + tokens cut to max_words - 1 entries, then EOT
    assert ids[0, 1:7].tolist() == tok.bpe.encode("A man is playing a guitar on the stage")[:6]
    assert ids[1].tolist()[:3] == [tok.sot, tok.bpe.encode("hi")[0], tok.eot]
    assert ids[1, 3:].tolist() == [0] * 5 and mask[1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert int(ids[1].argmax()) == 2  # EOT is the largest id: the text feature position


def test_empty_caption_is_sot_eot():
    ids, mask = Tokenizer(4)([""])
    assert ids[0].tolist()[:2] == [49406, 49407] and mask[0].tolist() == [1, 1, 0, 0]


def test_a_40k_character_word_is_cut_before_bpe():
    import random

    from clip4clip_dali.data.text import MAX_WORD_CHARS, bound_text

    rng = random.Random(0)
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(40_000))
    tok = Tokenizer(16)
    # what is kept is the word's first MAX_WORD_CHARS characters, tokenized as BPE does them
    head = tok.bpe.encode(word[:MAX_WORD_CHARS])
    assert tok.encode(word) == [tok.sot] + head[:14] + [tok.eot]
    kept = tok.bpe.encode("find " + word[:MAX_WORD_CHARS])
    assert tok.encode("find " + word) == [tok.sot] + kept[:14] + [tok.eot]
    assert len(bound_text("a " * 100_000)) <= 1024


def test_ordinary_text_is_not_changed_by_the_bounds():
    from clip4clip_dali.data.text import bound_text

    caption = "a man   is playing a guitar on the stage " * 20  # 860 characters
    assert bound_text(caption) == caption
    assert Tokenizer(77).encode(caption)[1:-1] == Tokenizer(77).bpe.encode(caption)[:75]


def test_a_caption_that_is_not_text_is_named():
    import pytest

    with pytest.raises(TypeError, match="got NoneType"):
        Tokenizer(8)([None])

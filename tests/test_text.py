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

"""MSR-VTT in CLIP4Clip's layout: the reader on files in the exact layout (MSRVTT_data.json,
the 9k/7k train CSV, the 1k-A test CSV), unfolded and per-epoch captions, a real MSR-VTT clip,
and broken inputs."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from clip4clip_dali.config import DataConfig
from clip4clip_dali.data.dataset import DatasetError, load_split, split_names
from clip4clip_dali.data.msrvtt import read_sentences, read_test_rows, read_train_ids
from clip4clip_dali.data.loaders.reference import ReferenceLoader
from clip4clip_dali.data.loaders.sharding import epoch_captions, train_sample_count
from conftest import REALDATA, require_realdata
from layout_fixtures import caption, write_clips, write_msrvtt

TRAIN, TEST = ["video0", "video1", "video2", "video3", "video4"], ["video5", "video6", "video7"]


@pytest.fixture(scope="module")
def msrvtt(tmp_path_factory):
    root = tmp_path_factory.mktemp("msrvtt")
    write_clips(root / "MSRVTT_Videos")
    write_msrvtt(root / "msrvtt_data", TRAIN, TEST)
    return root


def cfg(root, **kw) -> DataConfig:
    return DataConfig(**{**dict(dataset="msrvtt", data_path=str(root / "msrvtt_data"),
                                features_path=str(root / "MSRVTT_Videos"), max_frames=4,
                                image_resolution=32, dali_threads=1), **kw})


def test_the_1k_a_csv_layout_is_read_row_by_row(tmp_path):
    """key, vid_key, video_id, sentence: one caption per video, commas and quotes kept."""
    p = tmp_path / "MSRVTT_JSFUSION_test.csv"
    p.write_text('key,vid_key,video_id,sentence\n'
                 'ret0,msr7579,video7579,a girl wearing red top and black trouser is putting a '
                 'sweater on a dog\n'
                 'ret1,msr7725,video7725,"young people sit around the edges of a room, clapping"\n'
                 'ret2,msr9258,video9258,"a man says ""hello""  to   the camera"\n')
    assert read_test_rows(p) == [
        ("video7579", "a girl wearing red top and black trouser is putting a sweater on a dog"),
        ("video7725", "young people sit around the edges of a room, clapping"),
        ("video9258", 'a man says "hello" to the camera')]


def test_train_csv_and_json_fields(msrvtt, tmp_path):
    data = msrvtt / "msrvtt_data"
    assert read_train_ids(data / "MSRVTT_train.9k.csv") == TRAIN
    caps = read_sentences(data / "MSRVTT_data.json")
    assert caps["video2"] == [caption("video2", j) for j in range(3)]
    # a 7k-style CSV with more columns than video_id is read by its video_id column
    p = tmp_path / "MSRVTT_train.7k.csv"
    p.write_text("video_id,split\nvideo3,train\nvideo1,train\nvideo3,train\n")
    assert read_train_ids(p) == ["video3", "video1"]


def test_unfolded_training_is_one_sample_per_caption(msrvtt):
    split = load_split(cfg(msrvtt, msrvtt_unfold_sentences=True), "train")
    assert split.video_ids == TRAIN and not split.caption_per_epoch
    assert train_sample_count(split) == len(split.captions) == 15
    assert list(epoch_captions(split, 3, 0)) == list(range(15))
    assert split.captions[split.caption_video.tolist().index(2)] == caption("video2", 0)


def test_per_epoch_caption_is_seeded_reproducible_and_covers_the_captions(msrvtt):
    split = load_split(cfg(msrvtt), "train")
    assert split.caption_per_epoch and train_sample_count(split) == split.num_videos == 5
    picks = [epoch_captions(split, e, seed=42) for e in range(30)]
    for p in picks:  # sample i is video i, its caption one of video i's
        assert (split.caption_video[p] == np.arange(5)).all()
    assert all((a == b).all() for a, b in zip(picks, [epoch_captions(split, e, 42)
                                                      for e in range(30)]))
    assert not all((a == picks[0]).all() for a in picks)  # drawn anew each epoch
    assert set(np.concatenate(picks).tolist()) == set(range(15))  # every caption comes up
    assert any((epoch_captions(split, e, 43) != picks[e]).any() for e in range(30))  # seeded


def test_val_and_test_read_the_test_csv_one_caption_per_video(msrvtt):
    c = cfg(msrvtt)
    assert split_names(c) == ["train", "val", "test"]
    for name in ("val", "test"):
        s = load_split(c, name)
        assert s.video_ids == TEST and s.captions == [caption(v, 0) for v in TEST]
        assert s.caption_video.tolist() == [0, 1, 2]
        assert {i.codec for i in s.video_info} == {"vp9", "mjpeg"}


def test_reference_loader_text_follows_the_drawn_caption(msrvtt):
    c = cfg(msrvtt)
    split = load_split(c, "train")
    loader = ReferenceLoader(split, c, "train", 5, seed=3, num_workers=0)
    from clip4clip_dali.data.text import Tokenizer

    tokens, _ = Tokenizer(c.max_words)(split.captions)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        (batch,) = list(loader)
        want = epoch_captions(split, epoch, 3)[batch["video_index"].numpy()]
        assert (batch["text"] == tokens[want]).all()


def test_real_msrvtt_clip(tmp_path):
    """video9818 (H.264 + AAC in MP4, from MSR-VTT's test set) with its real captions."""
    require_realdata()
    src = REALDATA / "clips" / "msrvtt_video9818.mp4"
    caps = json.loads((REALDATA / "clips" / "sources_and_captions.json").read_text())
    caps = caps["lszp_demo/msrvtt_video9818.mp4"]["captions"]
    videos = tmp_path / "MSRVTT_Videos"
    videos.mkdir()
    shutil.copy(src, videos / "video9818.mp4")
    data = tmp_path / "msrvtt_data"
    data.mkdir()
    (data / "MSRVTT_data.json").write_text(json.dumps({"videos": [{"video_id": "video9818"}],
        "sentences": [{"caption": c, "video_id": "video9818", "sen_id": k}
                      for k, c in enumerate(caps)]}))
    (data / "MSRVTT_train.9k.csv").write_text("video_id\nvideo9818\n")
    (data / "MSRVTT_JSFUSION_test.csv").write_text(
        f"key,vid_key,video_id,sentence\nret588,msr9818,video9818,{caps[0]}\n")
    c = DataConfig(dataset="msrvtt", data_path=str(data), features_path=str(videos),
                   max_frames=4, image_resolution=32)
    test = load_split(c, "test")
    assert test.captions == [caps[0]] and test.video_info[0].codec == "h264"
    train = load_split(c, "train")
    assert train.captions == caps and train.caption_per_epoch
    (batch,) = list(ReferenceLoader(test, c, "eval", 1, num_workers=0))
    assert batch["video"].shape == (1, 4, 3, 32, 32) and int(batch["video_mask"].sum()) == 4


def _broken(root, tmp_path):
    bad = tmp_path / "msrvtt_data"
    shutil.copytree(root / "msrvtt_data", bad)
    return bad


@pytest.mark.parametrize("case, split, match", [
    ("no_json", "train", "MSRVTT_data.json does not exist"),
    ("json_garbage", "train", "not readable JSON"),
    ("json_no_sentences", "train", "no 'sentences' list"),
    ("sentence_without_caption", "train", r"1 of 24 sentences lack a string video_id or caption"),
    ("train_csv_wrong_column", "train", "no column 'video_id'"),
    ("test_csv_no_sentence", "test", "no column 'sentence'"),
    ("test_csv_missing", "val", "MSRVTT_JSFUSION_test.csv does not exist"),
    ("empty_train_csv", "train", "lists no videos"),
    ("unknown_split", "dev", "MSR-VTT has the splits train, val, test"),
    ("all_videos_missing", "test", "none of the 3 listed videos"),
])
def test_broken_msrvtt_inputs_are_refused_with_the_file_named(msrvtt, tmp_path, case, split,
                                                              match):
    data = _broken(msrvtt, tmp_path)
    videos = msrvtt / "MSRVTT_Videos"
    j = data / "MSRVTT_data.json"
    if case == "no_json":
        j.unlink()
    elif case == "json_garbage":
        j.write_text('{"sentences": [')
    elif case == "json_no_sentences":
        j.write_text('{"videos": []}')
    elif case == "sentence_without_caption":
        doc = json.loads(j.read_text())
        del doc["sentences"][4]["caption"]
        j.write_text(json.dumps(doc))
    elif case == "train_csv_wrong_column":
        (data / "MSRVTT_train.9k.csv").write_text("vid\nvideo0\n")
    elif case == "test_csv_no_sentence":
        (data / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id\nret0,msr5,video5\n")
    elif case == "test_csv_missing":
        (data / "MSRVTT_JSFUSION_test.csv").unlink()
    elif case == "empty_train_csv":
        (data / "MSRVTT_train.9k.csv").write_text("video_id\n")
    elif case == "all_videos_missing":
        videos = tmp_path / "empty_videos"
        videos.mkdir()
    c = DataConfig(dataset="msrvtt", data_path=str(data), features_path=str(videos))
    with pytest.raises(DatasetError, match=match):
        load_split(c, split)


def test_missing_and_unreadable_videos_are_skipped_with_a_warning(msrvtt, tmp_path, caplog):
    videos = tmp_path / "videos"
    shutil.copytree(msrvtt / "MSRVTT_Videos", videos)
    next(videos.glob("video1.*")).unlink()
    (videos / "video2.webm").unlink()
    (videos / "video2.mp4").write_bytes(b"not a video")
    c = DataConfig(dataset="msrvtt", data_path=str(msrvtt / "msrvtt_data"),
                   features_path=str(videos))
    with caplog.at_level(logging.WARNING):
        split = load_split(c, "train")
    assert split.video_ids == ["video0", "video3", "video4"]
    assert "1 with no video file" in caplog.text and "video1" in caplog.text
    assert "skipping unreadable video" in caplog.text and "video2.mp4" in caplog.text
    assert len(split.captions) == 9 and split.caption_video.max() == 2


def test_val_csv_override(msrvtt, tmp_path):
    data = _broken(msrvtt, tmp_path)
    (data / "val.csv").write_text("key,vid_key,video_id,sentence\nret0,msr3,video3,a val row\n")
    c = DataConfig(dataset="msrvtt", data_path=str(data), msrvtt_val_csv="val.csv",
                   features_path=str(msrvtt / "MSRVTT_Videos"))
    assert load_split(c, "val").captions == ["a val row"]
    assert load_split(c, "test").video_ids == TEST


def test_every_loader_reads_the_same_drawn_caption_and_resumes_mid_epoch(msrvtt):
    """DALI (CPU), the reference loader and the frame cache: same samples, same drawn caption
    tokens, each epoch; a pass resumed at batch 1 reads what the full pass read from there."""
    from clip4clip_dali.data.loaders.dali_loader import DaliLoader
    from clip4clip_dali.data.loaders.frame_cache import CachedLoader
    from clip4clip_dali.data.text import Tokenizer

    c = cfg(msrvtt)
    split = load_split(c, "train")
    tokens, _ = Tokenizer(c.max_words)(split.captions)
    loaders = [DaliLoader(split, c, "train", 2, seed=9),
               ReferenceLoader(split, c, "train", 2, seed=9, num_workers=0),
               CachedLoader(split, c, "train", 2,
                            lambda d, rank, ranks: DaliLoader(split, d, "eval", 4), seed=9)]
    for epoch in (0, 1):
        runs = []
        for loader in loaders:
            loader.set_epoch(epoch)
            runs.append(list(loader))
        drawn = epoch_captions(split, epoch, 9)
        for batches in runs:
            assert len(batches) == 2
            for got, want in zip(batches, runs[0]):
                assert torch.equal(got["video_index"].cpu(), want["video_index"].cpu())
                assert torch.equal(got["text"].cpu(), want["text"].cpu())
                assert torch.equal(got["text"], tokens[drawn[got["video_index"].numpy()]])
        resumed = list(loaders[0].iter_from(1))
        assert len(resumed) == 1
        assert torch.equal(resumed[0]["text"], runs[0][1]["text"])


@pytest.mark.parametrize("name, dataset, header", [
    ("msrvtt_meanP", "msrvtt", "meanP"), ("msrvtt_seqTransf", "msrvtt", "seqTransf"),
    ("own_clips_meanP", "jsonl", "meanP")])
def test_dataset_configs_load(name, dataset, header):
    from clip4clip_dali.config import ConfigError, load_config
    from conftest import REPO

    c = load_config(REPO / "configs" / f"{name}.yaml")
    assert c.data.dataset == dataset and c.model.sim_header == header
    if dataset == "msrvtt":  # the original's --expand_msrvtt_sentences reference run
        assert c.data.msrvtt_unfold_sentences and c.data.msrvtt_train_csv == "MSRVTT_train.9k.csv"
    with pytest.raises(ConfigError, match="MSVD-layout"):
        load_config(REPO / "configs" / f"{name}.yaml", ["data.synthetic.videos=4"])

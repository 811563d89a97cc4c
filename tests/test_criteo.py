"""The Criteo TSV writer and streaming reader, checked against an independent line-by-line reference."""
import math
import re

import pytest
import torch

from pruninglab.data.criteo import (
    CriteoBatches,
    CriteoFormatError,
    index_lines,
    make_criteo_main,
    parse_lines,
    write_synthetic_criteo,
)

NB = 1000


def reference_row(line: str, has_label=True, nb=NB):
    """Independent parse of one line: plain string ops and math.log, no numpy."""
    fields = line.rstrip("\n").rstrip("\r").split("\t")
    off = 1 if has_label else 0
    ints = [math.log(max(int(s) if s else 0, -2) + 3) for s in fields[off:off + 13]]
    cats = [0 if s == "" else 1 + int(s, 16) % (nb - 1) for s in fields[off + 13:off + 39]]
    label = float(fields[0]) if has_label else None
    return ints, cats, label


def read_all(batches):
    ints, cats, labels = [], [], []
    for (i, c), y in batches:
        ints.append(i)
        cats.append(c)
        labels.append(y)
    return torch.cat(ints), torch.cat(cats), torch.cat(labels)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    return write_synthetic_criteo(tmp_path_factory.mktemp("criteo") / "train.txt", 9000, seed=3)


def test_writer_is_byte_exact_format(train_file, tmp_path):
    raw = train_file.read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")
    lines = raw.decode("ascii").split("\n")[:-1]
    assert len(lines) == 9000
    hex8 = re.compile(r"[0-9a-f]{8}")
    n_neg = n_empty_int = n_empty_cat = n_trailing = 0
    for line in lines:
        f = line.split("\t")
        assert len(f) == 40 and line.count("\t") == 39
        assert f[0] in ("0", "1")
        for s in f[1:14]:
            if s == "":
                n_empty_int += 1
            else:
                assert re.fullmatch(r"-?[0-9]+", s), s
                n_neg += int(s) < 0
        for s in f[14:]:
            if s == "":
                n_empty_cat += 1
            else:
                assert hex8.fullmatch(s), s
        n_trailing += line.endswith("\t")
    assert n_neg > 0 and n_empty_int > 0 and n_empty_cat > 0 and n_trailing > 0
    assert "\t\t" in raw.decode("ascii")  # consecutive tabs (missing values) occur
    labels = [int(line[0]) for line in lines]
    assert 0.15 < sum(labels) / len(labels) < 0.35
    # Hex round trip: formatting the parsed value gives the field back.
    f = lines[0].split("\t")
    assert all(format(int(s, 16), "08x") == s for s in f[14:] if s)
    # Seeded: same seed -> same bytes, other seed -> other bytes.
    a = write_synthetic_criteo(tmp_path / "a.txt", 50, seed=3)
    b = write_synthetic_criteo(tmp_path / "b.txt", 50, seed=3)
    c = write_synthetic_criteo(tmp_path / "c.txt", 50, seed=4)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_test_format_and_cli(tmp_path, capsys):
    out = tmp_path / "sub" / "test.txt"
    assert make_criteo_main([str(out), "--rows", "30", "--seed", "1", "--test-format"]) == 0
    lines = out.read_text().split("\n")[:-1]
    assert len(lines) == 30 and all(line.count("\t") == 38 for line in lines)
    assert "39 fields" in capsys.readouterr().out
    with pytest.raises(CriteoFormatError, match=r"test\.txt: lines have 39 fields, no label: this is the unlabelled"):
        CriteoBatches(out, 10)  # training needs labels
    batches = CriteoBatches(out, 10, mode="eval")  # has_label detected from the first line
    assert not batches.has_label
    (ints, cats), labels = next(iter(batches))
    assert labels is None and ints.shape == (10, 13) and cats.shape == (10, 26)
    ref = [reference_row(line, has_label=False) for line in lines[:10]]
    assert torch.allclose(ints, torch.tensor([r[0] for r in ref]), atol=1e-6)
    assert torch.equal(cats, torch.tensor([r[1] for r in ref]))


def test_reader_matches_reference(train_file):
    lines = train_file.read_text().split("\n")[:-1]
    ints, cats, labels = read_all(CriteoBatches(train_file, 1000, num_buckets=NB))
    assert ints.shape == (9000, 13) and cats.shape == (9000, 26) and cats.dtype == torch.int64
    ref = [reference_row(line) for line in lines]
    assert torch.allclose(ints, torch.tensor([r[0] for r in ref], dtype=torch.float32), atol=1e-6)
    assert torch.equal(cats, torch.tensor([r[1] for r in ref]))
    assert torch.equal(labels, torch.tensor([r[2] for r in ref], dtype=torch.float32))
    assert int(cats.max()) < NB and bool((cats[:, -1] == 0).any())


def test_line_index_seek_skip_and_workers(train_file):
    idx = index_lines(train_file, every=7)
    assert idx.num_lines == 9000 and idx.first_fields == 40
    data = train_file.read_bytes()
    starts = [0] + [i + 1 for i, b in enumerate(data) if b == 10][:-1]
    assert list(idx.offsets) == starts[::7]
    full = CriteoBatches(train_file, 700, start_row=100, end_row=8900)
    assert len(full) == 8800 // 700
    all_batches = list(full)
    skipped = list(full.batches(epoch=3, skip=5))  # resume mid-epoch: no bytes of the first 5 read
    assert len(skipped) == len(all_batches) - 5
    for (a, b) in zip(all_batches[5:], skipped):
        assert torch.equal(a[0][1], b[0][1]) and torch.equal(a[1], b[1])
    with_workers = list(CriteoBatches(train_file, 700, start_row=100, end_row=8900, num_workers=2))
    assert len(with_workers) == len(all_batches)
    for a, b in zip(all_batches, with_workers):  # same batches, same order
        assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[0][1], b[0][1]) and torch.equal(a[1], b[1])


def test_ranks_partition_the_rows(train_file):
    single = list(CriteoBatches(train_file, 200, end_row=2000, rank=0, world_size=1))
    r0 = list(CriteoBatches(train_file, 100, end_row=2000, rank=0, world_size=2))
    r1 = list(CriteoBatches(train_file, 100, end_row=2000, rank=1, world_size=2))
    assert len(single) == len(r0) == len(r1) == 10
    for s, a, b in zip(single, r0, r1):  # rank 0 + rank 1 = the single-process global batch
        assert torch.equal(s[0][1], torch.cat([a[0][1], b[0][1]])) and torch.equal(s[1], torch.cat([a[1], b[1]]))
    # Evaluation mode: every row exactly once over ranks, the last batch may be short.
    e0 = read_all(CriteoBatches(train_file, 300, start_row=50, end_row=1050, mode="eval", rank=0, world_size=2))
    e1 = read_all(CriteoBatches(train_file, 300, start_row=50, end_row=1050, mode="eval", rank=1, world_size=2))
    assert len(e0[2]) + len(e1[2]) == 1000
    ref = read_all(CriteoBatches(train_file, 1000, start_row=50, end_row=1050, mode="eval"))
    merged = torch.cat([e0[1][:300], e1[1][:300], e0[1][300:600], e1[1][300:]])
    assert torch.equal(merged, ref[1])


EDGE_LINES = [
    "1" + "\t" * 39,  # every feature missing: 39 tabs in a row
    "0\t-1\t-2\t-5\t0\t\t7\t\t\t\t\t\t\t3" + "\tABCDEF01\t1\t" + "\t" * 23 + "0000000a",  # negatives, upper-case, short hex
    "1\t" + "\t".join(["12"] * 13) + "\t" + "\t".join(["deadbeef"] * 26) + "\r",  # CRLF ending
]


def test_edge_case_lines():
    ints, cats, labels, skipped = parse_lines([line + "\n" for line in EDGE_LINES], num_buckets=NB)
    assert skipped == 0 and labels.tolist() == [1.0, 0.0, 1.0]
    assert torch.allclose(ints[0], torch.full((13,), math.log(3)))  # missing -> 0 -> log 3
    assert torch.equal(cats[0], torch.zeros(26, dtype=torch.long))  # missing -> reserved index 0
    assert torch.allclose(ints[1, :3], torch.tensor([math.log(2), 0.0, 0.0]))  # -1 -> log 2; -2, -5 -> log 1
    assert cats[1, 0] == 1 + 0xABCDEF01 % (NB - 1) and cats[1, 1] == 1 + 1 % (NB - 1)
    assert cats[1, 25] == 1 + 10 % (NB - 1) and (cats[1, 2:25] == 0).all()
    assert torch.allclose(ints[2], torch.full((13,), math.log(15)))


def row(label="0", ints=None, cats=None):
    ints = ints or {}
    cats = cats or {}
    return "\t".join([label] + [ints.get(j, "") for j in range(1, 14)] + [cats.get(j, "") for j in range(1, 27)])


@pytest.mark.parametrize("bad, message", [
    ("1\t" + "\t".join(["1"] * 12) + "\t" + "\t".join(["a"] * 26), r"has 39 tab-separated fields, expected 40"),
    (row("1") + "\t", r"has 41 tab-separated fields, expected 40"),
    (row("1", {1: "1", 2: "2", 3: "abc"}), r"integer feature I3 \(field 4\) is 'abc'"),
    (row("1", {1: "1.5"}), r"integer feature I1 \(field 2\) is '1.5'"),
    (row("1", {13: "+4"}), r"integer feature I13 \(field 14\) is '\+4'"),
    (row("2"), r"label \(field 1\) is '2'"),
    (row("0", cats={2: "zz"}), r"categorical feature C2 \(field 16\) is 'zz'"),
    (row("0", cats={1: "123456789"}), r"categorical feature C1 \(field 15\) is '123456789'"),
    ("", r"has 1 tab-separated fields"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad, message):
    good = "0" + "\t" * 39
    path = tmp_path / "bad.txt"
    lines = [good] * 1233 + [bad] + [good] * 66
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CriteoFormatError, match=rf"bad\.txt, line 1234: {message}"):
        list(CriteoBatches(path, 100, has_label=True))
    # With the explicit option the line is skipped, counted and reported; its batch is one row short.
    reader = CriteoBatches(path, 100, has_label=True, on_error="skip")
    with pytest.warns(UserWarning, match=r"skipped 1 malformed line\(s\) of .*bad\.txt in epoch 0"):
        sizes = [len(y) for _, y in reader]
    assert reader.skipped == 1 and sizes[12] == 99 and sum(sizes) == 1299


def test_last_line_without_newline_and_bad_arguments(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("\n".join(["0" + "\t" * 39] * 5))  # no final newline
    assert index_lines(path).num_lines == 5
    assert sum(len(y) for _, y in CriteoBatches(path, 5, mode="eval")) == 5
    with pytest.raises(FileNotFoundError, match="make-criteo"):
        CriteoBatches(tmp_path / "missing.txt", 4)
    with pytest.raises(ValueError, match="batch_size: 8 rows x 1 process"):
        CriteoBatches(path, 8)
    with pytest.raises(ValueError, match="on_error"):
        CriteoBatches(path, 2, on_error="ignore")
    with pytest.raises(ValueError, match="start_row/end_row"):
        CriteoBatches(path, 2, start_row=5)
    with pytest.raises(ValueError, match="num_buckets"):
        parse_lines(["0" + "\t" * 39], num_buckets=1)
    other = tmp_path / "o.txt"
    other.write_text("1\t2\t3\n")
    with pytest.raises(CriteoFormatError, match=r"o\.txt, line 1: has 3 tab-separated fields"):
        CriteoBatches(other, 1)
    with pytest.raises(ValueError, match="rows"):
        write_synthetic_criteo(tmp_path / "x.txt", 0)



# --------------------------------------------------------------------------- hostile input


def test_empty_compressed_and_misdelimited_files_get_a_hint(tmp_path):
    import gzip

    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(CriteoFormatError, match=r"empty\.txt: the file is empty"):
        CriteoBatches(empty, 1)
    gz = tmp_path / "train.txt.gz"
    gz.write_bytes(gzip.compress(("0" + "\t" * 39 + "\n").encode() * 50))
    with pytest.raises(CriteoFormatError, match=r"line 1: has \d+ tab-separated fields.*gzip-compressed; decompress "
                                                r"it first \(e\.g\. `gunzip train\.txt\.gz`\)"):
        CriteoBatches(gz, 1)
    csv = tmp_path / "c.csv"
    csv.write_text("0," + ",".join(["1"] * 39) + "\n")
    with pytest.raises(CriteoFormatError, match=r"has 1 tab-separated fields.*commas and no tabs"):
        CriteoBatches(csv, 1)


def test_file_that_ends_early_names_file_and_line(tmp_path):
    path = write_synthetic_criteo(tmp_path / "t.txt", 500, seed=0)
    reader = CriteoBatches(path, 100)  # indexed at 500 lines
    data = path.read_bytes()
    cut = [i for i, b in enumerate(data) if b == 10][249] + 1  # keep exactly 250 whole lines
    path.write_bytes(data[:cut])
    import os

    os.utime(path, ns=(0, 0))  # an old mtime would not hide it either; the reader checks what it reads
    with pytest.raises(CriteoFormatError, match=r"t\.txt, line 251: the file ends early"):
        list(reader.batches(0, 0))
    # A last line cut mid-way, without its newline: the message says the file looks truncated.
    path.write_bytes(data[: cut + 30])
    with pytest.raises(CriteoFormatError, match=r"t\.txt, line 251: has \d+ tab-separated fields.*no line ending: "
                                                r"the file looks truncated"):
        list(CriteoBatches(path, 50, mode="eval"))


def test_skip_never_yields_an_empty_batch(tmp_path):
    path = tmp_path / "mostly_bad.txt"
    good, bad = "0" + "\t" * 39, "x" + "\t" * 39
    path.write_text("\n".join([good] * 10 + [bad] * 10 + [good] * 10) + "\n")
    reader = CriteoBatches(path, 10, on_error="skip")
    with pytest.raises(CriteoFormatError, match=r"lines 11-20: all 10 lines of this batch are malformed"):
        list(reader)


# --------------------------------------------------------------------------- prepared arrays

from pruninglab.data.criteo_prepared import CriteoArrays, open_criteo, prepare_criteo  # noqa: E402


def batches_equal(a, b):
    return len(a) == len(b) and all(
        torch.equal(x[0][0], y[0][0]) and torch.equal(x[0][1], y[0][1]) and torch.equal(x[1], y[1])
        for x, y in zip(a, b))


def test_prepared_arrays_match_the_text_reader(train_file, tmp_path):
    out = prepare_criteo(train_file, tmp_path / "prep", num_buckets=NB, chunk_rows=2500)
    assert sorted(p.name for p in out.iterdir()) == ["categoricals.npy", "integers.npy", "labels.npy", "meta.json"]
    for kw in ({}, {"start_row": 100, "end_row": 8900}, {"rank": 1, "world_size": 2},
               {"mode": "eval", "start_row": 50, "end_row": 1050, "rank": 0, "world_size": 2}):
        text = list(CriteoBatches(train_file, 700, num_buckets=NB, **kw))
        arrays = list(CriteoArrays(out, 700, num_buckets=NB, **kw))
        assert batches_equal(text, arrays), kw
    reader = CriteoArrays(out, 700)
    assert batches_equal(list(reader.batches(2, 5)), list(reader)[5:])  # resume: skip without reading
    assert isinstance(open_criteo(out, 700), CriteoArrays)
    assert isinstance(open_criteo(train_file, 700, pin_memory=False), CriteoBatches)
    with pytest.raises(ValueError, match=r"num_buckets: 999 differs from the 1000"):
        CriteoArrays(out, 10, num_buckets=999)
    # Preparing again: the same settings are a no-op; other settings are refused, not overwritten.
    assert prepare_criteo(train_file, out, num_buckets=NB) == out
    with pytest.raises(ValueError, match=r"already holds a preparation"):
        prepare_criteo(train_file, out, num_buckets=500)


def test_prepare_resumes_after_a_kill_and_is_atomic(train_file, tmp_path, monkeypatch):
    import pruninglab.data.criteo_prepared as cp

    real = cp._parse_chunk
    calls = []

    def dying(args):
        calls.append(args[2])
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill would, between two chunks
        return real(args)

    monkeypatch.setattr(cp, "_parse_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare_criteo(train_file, tmp_path / "p", num_buckets=NB, chunk_rows=2000)
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert "meta.json" not in names and "progress.json" in names and "integers.npy" not in names
    with pytest.raises(FileNotFoundError, match=r"an unfinished preparation \(rerun prepare-criteo"):
        CriteoArrays(tmp_path / "p", 10)
    calls.clear()
    monkeypatch.setattr(cp, "_parse_chunk", lambda a: (calls.append(a[2]), real(a))[1])
    prepare_criteo(train_file, tmp_path / "p", num_buckets=NB, chunk_rows=2000)
    assert calls == [4001, 6001, 8001]  # the two finished chunks were not parsed again
    monkeypatch.setattr(cp, "_parse_chunk", real)
    clean = prepare_criteo(train_file, tmp_path / "clean", num_buckets=NB, chunk_rows=3000, workers=2)
    assert batches_equal(list(CriteoArrays(tmp_path / "p", 1000)), list(CriteoArrays(clean, 1000)))
    assert not (tmp_path / "p" / "progress.json").exists()


def test_prepare_skips_bad_lines_and_the_cli(tmp_path, capsys):
    from pruninglab.experiments.prepare_criteo import main

    good = "0\t" + "\t".join(["3"] * 13) + "\t" * 26
    path = tmp_path / "t.txt"
    path.write_text("\n".join([good] * 5 + ["junk"] + [good] * 4) + "\n")
    with pytest.raises(CriteoFormatError, match=r"t\.txt, line 6: has 1 tab-separated fields"):
        main([str(path), str(tmp_path / "a"), "--num-buckets", "50", "--quiet"])
    assert main([str(path), str(tmp_path / "b"), "--num-buckets", "50", "--skip-bad-lines", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "prepared 9 rows" in out and "1 line(s) skipped" in out
    import numpy as np

    assert np.load(tmp_path / "b" / "integers.npy").shape == (9, 13)  # the header was shrunk to the rows kept
    (ints, _), labels = next(iter(CriteoArrays(tmp_path / "b", 9)))
    assert torch.allclose(ints, torch.full((9, 13), math.log(6))) and labels.shape == (9,)
    test = write_synthetic_criteo(tmp_path / "test.txt", 20, with_label=False)
    prepare_criteo(test, tmp_path / "tp", num_buckets=50)
    with pytest.raises(CriteoFormatError, match="unlabelled test file"):
        CriteoArrays(tmp_path / "tp", 5)
    (_, cats), labels = next(iter(CriteoArrays(tmp_path / "tp", 5, mode="eval")))
    assert labels is None and cats.shape == (5, 26)


# --------------------------------------------------------------------------- sparse embedding gradients


def test_sparse_embedding_with_dense_sparse_adam():
    from pruninglab.models import CriteoMLP
    from pruninglab.optim import DenseSparseAdam

    torch.manual_seed(0)
    dense_net = CriteoMLP(num_buckets=50)
    torch.manual_seed(0)
    sparse_net = CriteoMLP(num_buckets=50, sparse_embedding=True)
    assert sparse_net._ddp_params_and_buffers_to_ignore == ["embedding.weight"]
    x = (torch.randn(16, 13), torch.randint(0, 50, (16, 26)))
    sparse_net(x).sum().backward()
    dense_net(x).sum().backward()
    g = sparse_net.embedding.weight.grad
    assert g.is_sparse and torch.allclose(g.to_dense(), dense_net.embedding.weight.grad, atol=1e-6)
    opt = DenseSparseAdam(sparse_net, lr=0.1)
    ref = torch.optim.Adam(dense_net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    assert opt.sparse.param_groups[0]["lr"] == opt.dense.param_groups[0]["lr"] == 0.05
    for o in (opt, ref):
        for group in o.param_groups:
            group["lr"] = 0.1
    before = sparse_net.embedding.weight.detach().clone()
    opt.step()
    ref.step()
    touched = torch.zeros(26 * 50, dtype=torch.bool)
    touched[(x[1] + sparse_net.offsets).flatten()] = True
    w = sparse_net.embedding.weight.detach()
    assert torch.equal(w[~touched], before[~touched])  # lazy: untouched rows do not move
    # First lazy-Adam step on the touched rows, written out: lr * g / (|g| + eps / sqrt(1 - beta2))
    # (SparseAdam adds eps before the bias correction); Adam on the dense layers as torch's Adam.
    gd = g.to_dense()[touched]
    expected = before[touched] - 0.1 * gd / (gd.abs() + 1e-8 / math.sqrt(1 - 0.999))
    assert torch.allclose(w[touched], expected, atol=1e-6)
    assert torch.allclose(sparse_net.dense[0].weight, dense_net.dense[0].weight, atol=1e-6)
    state = opt.state_dict()
    again = DenseSparseAdam(sparse_net, lr=0.1)
    again.load_state_dict(state)
    assert again.state_dict()["sparse"]["state"].keys() == state["sparse"]["state"].keys()
    del sched
    with pytest.raises(ValueError, match="no sparse embedding"):
        DenseSparseAdam(dense_net)

"""poolcli import: every file it refuses is refused with one line, before anything large is
allocated, and the output folder is left as it was."""

import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from poolcli.errors import ModelError
from tests import onnx_models as M

onnx = M.onnx()
h = onnx.helper


def _import(path, out, until=()):
    from poolcli.importer import import_onnx

    return import_onnx(path, out, until)


def _refused(tmp_path, data, match, until=()):
    path = tmp_path / "m.onnx"
    path.write_bytes(data if isinstance(data, bytes) else data.SerializeToString())
    out = tmp_path / "out"
    tracemalloc.start()
    try:
        with pytest.raises(ModelError, match=match) as info:
            _import(path, out, until)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "\n" not in message
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folder left
    assert peak < 64 * 2**20, f"allocated {peak} bytes before refusing"
    return message


def test_truncated_file(tmp_path):
    data = M.conv_relu().SerializeToString()
    _refused(tmp_path, data[: len(data) // 2], "truncated|malformed")


def test_malformed_file(tmp_path):
    _refused(tmp_path, b"\xff\xfe not protobuf at all" * 10, "not a valid ONNX file")


def test_empty_file(tmp_path):
    _refused(tmp_path, b"", "empty file")


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="cannot read"):
        _import(tmp_path / "nope.onnx", tmp_path / "out")


def _with_initializer(tensor):
    model = M.conv_relu()
    inits = model.graph.initializer
    index = [t.name for t in inits].index(tensor.name)
    inits[index].CopyFrom(tensor)
    return model


def test_dims_of_2_to_the_40(tmp_path):
    t = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[2**40, 3, 3, 3])
    _refused(tmp_path, _with_initializer(t), "claims a dimension of 1099511627776")


def test_input_dims_of_2_to_the_40(tmp_path):
    model = M.conv_relu()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 2**40
    _refused(tmp_path, model, "claims a dimension")


def test_many_elements(tmp_path):
    t = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[2**20, 2**20, 3, 3])
    _refused(tmp_path, _with_initializer(t), "elements")


def test_tensor_claiming_more_bytes_than_the_file_holds(tmp_path):
    t = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[8, 3, 3, 1000], raw_data=b"\0" * 16)
    _refused(tmp_path, _with_initializer(t), "holds 16 bytes but its dims")


def test_typed_field_shorter_than_its_dims(tmp_path):
    t = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[8, 3, 3, 3], float_data=[1.0, 2.0])
    _refused(tmp_path, _with_initializer(t), "holds 2 values")


def _external(location, offset=0, length=None):
    t = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[8, 3, 3, 3])
    t.data_location = onnx.TensorProto.EXTERNAL
    entries = {"location": location, "offset": str(offset)}
    if length is not None:
        entries["length"] = str(length)
    for k, v in entries.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    return _with_initializer(t)


def test_external_data_missing(tmp_path):
    _refused(tmp_path, _external("weights.bin"), "weights.bin, which is missing beside the model")


def test_external_data_shorter_than_claimed(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 100)
    _refused(tmp_path, _external("weights.bin", offset=10), "which holds 100")


def test_external_data_outside_the_models_folder(tmp_path):
    _refused(tmp_path, _external("../../etc/passwd"), "not a file beside the model")


def test_external_data_is_read(tmp_path):
    """The same tensor kept beside the model is read (the import goes on to the graph)."""
    rng = np.random.default_rng(0)
    w = M.rand(rng, 8, 3, 3, 3)
    (tmp_path / "weights.bin").write_bytes(b"\0" * 12 + w.tobytes())
    from poolcli.importer.load import read_model
    from poolcli.importer.graph import build_graph

    path = tmp_path / "m.onnx"
    M.save(_external("weights.bin", offset=12, length=w.nbytes), path)
    graph = build_graph(read_model(path), path)
    np.testing.assert_array_equal(graph.consts["w"], w)


def test_cycle(tmp_path):
    nodes = [h.make_node("Relu", ["image_b"], ["a"], name="first"),
             h.make_node("Add", ["image", "a"], ["image_b"], name="second"),
             h.make_node("Relu", ["a"], ["out"], name="last")]
    _refused(tmp_path, M.make_model(nodes, {}), "cycle")


def test_thousands_of_nested_subgraphs(tmp_path):
    _refused(tmp_path, M.nested_subgraphs(5000), "nested too deeply|not a valid ONNX file")


def test_nested_subgraphs_beyond_the_limit(tmp_path):
    _refused(tmp_path, M.nested_subgraphs(20), "nested more than 16 deep")


def test_undefined_input(tmp_path):
    nodes = [h.make_node("Relu", ["nowhere"], ["out"], name="relu")]
    _refused(tmp_path, M.make_model(nodes, {}), "'nowhere', which no node")


@pytest.mark.parametrize("opset", [6, 22])
def test_opsets_outside_7_to_21(tmp_path, opset):
    nodes = [h.make_node("Relu", ["image"], ["out"], name="relu")]
    _refused(tmp_path, M.make_model(nodes, {}, opset=opset), f"opset {opset}; poolcli imports opsets")


def test_input_of_5_channels(tmp_path):
    nodes = [h.make_node("Relu", ["image"], ["out"], name="relu")]
    _refused(tmp_path, M.make_model(nodes, {}, channels=5), "5 channels")


def test_every_unsupported_op_listed_at_once(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [h.make_node("Conv", ["image", "w"], ["c"], name="conv"),
             h.make_node("Sin", ["c"], ["s"], name="the_sine"),
             h.make_node("Relu", ["s"], ["r"], name="relu_after"),  # after an unsupported op: not listed
             h.make_node("Cos", ["c"], ["k"], name="the_cosine"),
             h.make_node("Transpose", ["k"], ["t"], name="odd_transpose", perm=[0, 1, 3, 2]),
             h.make_node("Add", ["r", "t"], ["out"], name="add")]
    message = _refused(tmp_path, M.make_model(nodes, {"w": M.rand(rng, 4, 3, 3, 3)}), "2 nodes poolcli cannot import")
    assert "'the_sine' (Sin)" in message and "'the_cosine' (Cos)" in message
    assert "'odd_transpose' (Transpose" not in message  # its input already failed
    assert "relu_after" not in message


def test_unsupported_attribute_names_node_and_op(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [h.make_node("Conv", ["image", "w"], ["c"], name="conv"),
             h.make_node("Transpose", ["c"], ["out"], name="odd", perm=[0, 1, 3, 2])]
    message = _refused(tmp_path, M.make_model(nodes, {"w": M.rand(rng, 4, 3, 3, 3)}), "1 node poolcli cannot import")
    assert "'odd' (Transpose: perm [0, 1, 3, 2]" in message


def test_until_name_that_does_not_exist(tmp_path):
    message = _refused(tmp_path, M.conv_relu(), "no value of that name", until=["cc"])
    assert "did you mean 'c'?" in message


def test_until_a_constant(tmp_path):
    _refused(tmp_path, M.conv_relu(), "a constant of the model", until=["w"])


def test_size_dependent_reshape_is_refused(tmp_path):
    """A Reshape whose target is computed from the input's H and W (with dynamic axes) cannot
    be held by a stage: one line naming the node."""
    rng = np.random.default_rng(0)
    nodes = [h.make_node("Conv", ["image", "w"], ["c"], name="conv"),
             h.make_node("Shape", ["c"], ["shape"], name="shape"),
             h.make_node("Constant", [], ["perm"], name="const", value=onnx.numpy_helper.from_array(
                 np.array([0, 1, 3, 2], np.int64))),
             h.make_node("Gather", ["shape", "perm"], ["swapped"], name="gather", axis=0),
             h.make_node("Reshape", ["c", "swapped"], ["out"], name="reshape")]
    message = _refused(tmp_path, M.make_model(nodes, {"w": M.rand(rng, 4, 3, 3, 3)}), "'reshape' \\(Reshape")
    assert "depends on the input's height and width" in message


def test_folder_untouched_after_an_error(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "pipeline.yaml").write_text("mine\n")
    path = M.save(M.make_model([h.make_node("Sin", ["image"], ["out"], name="s")], {}), tmp_path / "m.onnx")
    with pytest.raises(ModelError):
        _import(path, out)
    assert sorted(os.listdir(out)) == ["pipeline.yaml"] and (out / "pipeline.yaml").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out"]


def test_cli_one_line_and_exit_1(tmp_path):
    path = M.save(M.make_model([h.make_node("Sin", ["image"], ["out"], name="s")], {}), tmp_path / "m.onnx")
    result = subprocess.run([sys.executable, "-m", "poolcli", "import", str(path), "-o", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "error:" in result.stderr and "'s' (Sin)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_without_onnx_the_message_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ModelError, match=r'pip install "poolcli\[onnx\]"'):
        _import(tmp_path / "m.onnx", tmp_path / "out")


# --- the output folder -------------------------------------------------------------------------------


def _cli_import(tmp_path, out, umask=None, model=None):
    path = M.save(model or M.conv_relu(), tmp_path / "m.onnx")
    return subprocess.run([sys.executable, "-m", "poolcli", "import", str(path), "-o", str(out)],
                          capture_output=True, text=True, umask=-1 if umask is None else umask)


@pytest.mark.parametrize("umask, folder, files", [(0o022, 0o755, 0o644), (0o002, 0o775, 0o664), (0o077, 0o700, 0o600)])
def test_the_folder_and_files_get_the_usual_permissions(tmp_path, umask, folder, files):
    """0o777 and 0o666 less the umask, as mkdir and a shell's > give: not a temporary folder's 0o700."""
    result = _cli_import(tmp_path, tmp_path / "a" / "out", umask)
    assert result.returncode == 0, result.stderr
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "a") == folder and mode(tmp_path / "a" / "out") == folder
    assert mode(tmp_path / "a" / "out" / "pipeline.yaml") == files
    assert mode(tmp_path / "a" / "out" / "weights.safetensors") == files


def test_importing_again_replaces_both_files_and_keeps_the_rest(tmp_path):
    out = tmp_path / "out"
    assert _cli_import(tmp_path, out).returncode == 0
    (out / "notes.txt").write_text("mine\n")
    (out / "pipeline.yaml").write_text("edited\n")
    rng = np.random.default_rng(5)
    assert _cli_import(tmp_path, out, model=M.conv_relu(rng=rng)).returncode == 0
    assert sorted(os.listdir(out)) == ["notes.txt", "pipeline.yaml", "weights.safetensors"]
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "pipeline.yaml").read_text().startswith("# Imported")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out"]  # no temporary folder left


def _old_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "pipeline.yaml").write_text("old config\n")
    (out / "weights.safetensors").write_bytes(b"old weights")
    return out


def _unchanged(tmp_path, out):
    assert sorted(os.listdir(out)) == ["pipeline.yaml", "weights.safetensors"]
    assert (out / "pipeline.yaml").read_text() == "old config\n"
    assert (out / "weights.safetensors").read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out"]


def test_a_failed_rename_puts_the_first_file_back(tmp_path, monkeypatch):
    """The weights renamed into DIR, then the config's rename fails: DIR's old weights return."""
    from poolcli.importer import write

    out = _old_folder(tmp_path)
    real = os.replace

    def failing(src, dst):
        if str(dst).endswith("pipeline.yaml"):
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(write.os, "replace", failing)
    with pytest.raises(ModelError, match="cannot write there: No space left on device") as info:
        _import(M.save(M.conv_relu(), tmp_path / "m.onnx"), out)
    assert "\n" not in str(info.value)
    _unchanged(tmp_path, out)


def test_a_full_disk_while_writing_the_weights_leaves_dir_as_it_was(tmp_path, monkeypatch):
    from poolcli.importer import write

    out = _old_folder(tmp_path)

    def full(path, data):
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(write, "_write_bytes", full)
    with pytest.raises(ModelError, match="No space left on device"):
        _import(M.save(M.conv_relu(), tmp_path / "m.onnx"), out)
    _unchanged(tmp_path, out)


def test_a_written_pipeline_that_does_not_load_leaves_dir_as_it_was(tmp_path, monkeypatch):
    from poolcli.importer import write

    out = _old_folder(tmp_path)
    real = write.render

    def broken(*args, **kwargs):
        text, tensors = real(*args, **kwargs)
        return text.replace("type: conv", "type: no_such_stage", 1), tensors

    monkeypatch.setattr(write, "render", broken)
    with pytest.raises(ModelError, match="the pipeline written does not load"):
        _import(M.save(M.conv_relu(), tmp_path / "m.onnx"), out)
    _unchanged(tmp_path, out)


def test_folders_made_for_dir_go_again_on_an_error(tmp_path, monkeypatch):
    """-o a/b/out where a/ does not exist: on an error, a/ is not left behind."""
    from poolcli.importer import write

    monkeypatch.setattr(write, "render", lambda *a, **k: ("stages: [\n", {}))
    path = M.save(M.conv_relu(), tmp_path / "m.onnx")
    with pytest.raises(ModelError):
        _import(path, tmp_path / "a" / "b" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_dir_that_is_a_file_is_refused_and_kept(tmp_path):
    (tmp_path / "out").write_text("a file\n")
    result = _cli_import(tmp_path, tmp_path / "out")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "exists and is not a folder" in result.stderr
    assert (tmp_path / "out").read_text() == "a file\n"


def test_a_read_only_parent_is_one_line(tmp_path):
    from processes import cli_obeying_permissions, permissions_apply

    reason = permissions_apply()
    if reason:
        pytest.skip(reason)
    path = M.save(M.conv_relu(), tmp_path / "m.onnx")
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        result = cli_obeying_permissions("import", path, "-o", parent / "out")
    finally:
        parent.chmod(0o755)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "cannot write there: Permission denied" in result.stderr
    assert os.listdir(parent) == []

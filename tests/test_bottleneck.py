"""The learned bottleneck at the split: its quantiser, its shapes and codes, and its fine-tuning
on the pristine run with the edge frozen."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddnn_jax import cli
from ddnn_jax.core.bottleneck import (
    BottleneckConfig,
    BottleneckedCloud,
    Decoder,
    Encoder,
    from_codes,
    quantize,
    to_codes,
)
from ddnn_jax.core.codes import entropy_code, entropy_decode, pack_codes, unpack_codes
from ddnn_jax.core.models import CloudCNN
from ddnn_jax.deploy.cloud import BackgroundServer, CloudHalf, cloud_app
from ddnn_jax.deploy.edge import EdgeConfig, run_edge


@pytest.mark.parametrize("bits", [4, 8])
def test_the_quantiser_rounds_forward_and_passes_the_gradient_straight_through(bits):
    u = jnp.linspace(0.0, 1.0, 101)
    q = quantize(u, bits)
    levels = 2**bits - 1
    np.testing.assert_allclose(q * levels, np.round(np.asarray(u) * levels), atol=1e-5)
    assert np.max(np.abs(np.asarray(q - u))) <= 0.5 / levels + 1e-6
    grad = jax.grad(lambda x: (quantize(x, bits) * jnp.arange(101.0)).sum())(u)
    np.testing.assert_array_equal(grad, np.arange(101.0))  # as if rounding were the identity
    codes = to_codes(q, bits)
    assert codes.dtype == jnp.uint8 and int(codes.max()) == levels
    np.testing.assert_allclose(from_codes(codes, bits), q, atol=1e-6)  # the wire's round trip


@pytest.mark.parametrize("z_shape", [(14, 14, 32), (16, 16, 32)])
@pytest.mark.parametrize("channels", [1, 2, 4, 8])
@pytest.mark.parametrize("stride", [1, 2])
def test_encoder_and_decoder_shapes_and_payload(z_shape, channels, stride):
    config = BottleneckConfig(channels=channels, bits=4, stride=stride)
    z = jax.ShapeDtypeStruct((3, *z_shape), jnp.float32)
    encoder, decoder = Encoder(channels, 4, stride), Decoder(z_shape)
    values = jax.eval_shape(lambda z: encoder.init_with_output(jax.random.key(1), z)[0], z)
    assert values.shape == (3, *config.code_shape(z_shape))
    decoded = jax.eval_shape(lambda v: decoder.init_with_output(jax.random.key(2), v)[0], values)
    assert decoded.shape == (3, *z_shape)
    h, w = -(-z_shape[0] // stride), -(-z_shape[1] // stride)
    assert config.payload_bytes(z_shape) == -(-h * w * channels * 4 // 8)


def test_the_whole_cloud_side_maps_z_to_logits_through_integer_codes():
    config = BottleneckConfig(channels=2, bits=8, stride=2)
    cloud = CloudCNN(10, conv_channels=(8, 8, 8, 8), dense_features=(16, 8))
    net = BottleneckedCloud(config, (14, 14, 32), cloud)
    z = jax.random.normal(jax.random.key(0), (4, 14, 14, 32))
    variables = jax.jit(net.init)(jax.random.key(1), z)
    assert set(variables["params"]) == {"encoder", "decoder", "cloud"}
    values = jax.jit(lambda v, z: net.apply(v, z, method=net.encode))(variables, z)
    received = from_codes(to_codes(values, 8), 8)  # what the cloud decodes from the wire
    direct = jax.jit(net.apply)(variables, z)
    through_wire = jax.jit(lambda v, x: net.apply(v, x, method=net.decode_head))(variables, received)
    np.testing.assert_allclose(direct, through_wire, atol=1e-5)
    assert direct.shape == (4, 10)
    assert float(values.min()) >= 0.0 and float(values.max()) <= 1.0


def test_bad_configs_are_refused():
    for bad, fragment in (
        (BottleneckConfig(channels=0), "--channels"),
        (BottleneckConfig(bits=3), "--bits"),
        (BottleneckConfig(stride=3), "--stride"),
        (BottleneckConfig(epochs=0), "--epochs"),
    ):
        with pytest.raises(ValueError, match=fragment):
            bad.check()


@pytest.mark.slow
def test_a_frozen_edge_fine_tune_changes_only_the_cloud(pristine, tmp_path, capsys):
    from ddnn_jax.core.training import build_model, make_predict_fn
    from ddnn_jax.rundir import RunDir, checkpoints, read_run_record, restore_best, run_data
    from ddnn_jax.rundir.bottlenecks import deployed_bottleneck, read_bottleneck_logits, read_coded_bytes

    run = RunDir(tmp_path / "run")
    shutil.copytree(pristine, run.root)
    before = checkpoints.state_digest(restore_best(run)[1])
    args = ["bottleneck", "--run", str(run.root), "--channels", "2", "--bits", "4", "--stride", "2"]
    assert cli.main([*args, "--epochs", "2", "--quiet"]) == 0
    assert "B per offload" in capsys.readouterr().out
    _, state, _ = restore_best(run)
    assert checkpoints.state_digest(state) == before  # the run itself is untouched
    deployed = deployed_bottleneck(run, "k2-b4-s2")
    record = deployed.record
    assert record.made_from == before and record.payload_bytes == 7 * 7 * 2 * 4 // 8
    assert len(record.history) == 2 and record.best_epoch in (1, 2)
    assert set(deployed.variables["params"]) == {"encoder", "decoder", "cloud"}  # nothing of the edge
    logits = read_bottleneck_logits(run.bottleneck("k2-b4-s2"))
    labels = np.load(run.outputs("val"))["labels"]
    assert float((logits["val"].argmax(-1) == labels).mean()) == pytest.approx(record.val_accuracy_cloud)
    # the stored logits are what the deployed bottleneck computes from the frozen edge's z,
    # through integer codes, as the wire will carry them
    run_record = read_run_record(run)
    predict = make_predict_fn(build_model(run_record.train, 10), run_record.mean, run_record.std, True)
    images = run_data(run_record.train).test.images[:64]
    local, _, z = predict({"params": state.params, "batch_stats": state.batch_stats}, images)
    codes = deployed.codes(deployed.variables, z)
    assert codes.dtype == jnp.uint8 and codes.shape == (64, 7, 7, 2) and int(codes.max()) <= 15
    through = deployed.logits_of_codes(deployed.variables, codes)
    np.testing.assert_allclose(np.asarray(through), logits["test"][:64], atol=1e-4)
    # the local exit is the run's: bit-identical to its collected outputs
    np.testing.assert_array_equal(np.asarray(local), np.load(run.outputs("test"))["local_logits"][:64])

    # a family priced for it: trained on the cloud's correctness behind it and lambda per kB of
    # each sample's coded payload (checked below, after evaluate)
    priced = ["--bottleneck", "k2-b4-s2", "--byte-cost", "50", "--grid", "0.5", "--max-epochs", "2"]
    assert cli.main(["route", "--run", str(run.root), *priced, "--quiet"]) == 0
    # evaluate scores the DDNN with it: the run's edge decisions, the bottleneck's cloud answers
    assert cli.main(["evaluate", "--run", str(run.root)]) == 0
    results = json.loads(run.results.read_text())
    scored = results["bottlenecks"]["k2-b4-s2"]
    test = np.load(run.outputs("test"))
    cloud_right = logits["test"].argmax(-1) == test["labels"]
    local_right = test["local_logits"].argmax(-1) == test["labels"]
    assert scored["cloud_only_accuracy"] == pytest.approx(cloud_right.mean())
    assert scored["payload_bytes"] == 49
    plain = results["curves"]["router_logits_calibrated"][0]
    thresholds = plain["threshold"]
    offload = np.load(run.family("logits").scores)["test"][0] >= thresholds
    (point,) = scored["curves"]["router_logits_calibrated"]
    assert point["local_rate"] == plain["local_rate"]  # the same decisions
    assert point["accuracy"] == pytest.approx(np.where(offload, cloud_right, local_right).mean())
    assert "entropy_calibrated" in scored["curves"] and "oracle" in scored["summary"]

    # the priced family: evaluate reports its offloads' mean coded payload
    coded = read_coded_bytes(run.bottleneck("k2-b4-s2"))
    assert {s: len(v) for s, v in coded.items()} == {s: len(np.load(run.outputs(s))["labels"]) for s in coded}
    assert coded["test"].min() >= 4 + 1 and coded["test"].max() <= 4 + 1 + 49
    curve = "router_logits_k2_b4_s2_lam50_calibrated"
    (priced_point,) = results["bottlenecks"]["k2-b4-s2"]["curves"][curve]
    family = run.family("logits-k2-b4-s2-lam50")
    priced_offload = np.load(family.scores)["test"][0] >= results["curves"][curve][0]["threshold"]
    expected = np.where(priced_offload, coded["test"], 0).mean()
    assert priced_point["coded_bytes_per_sample"] == pytest.approx(expected)
    assert json.loads(family.record.read_text())["config"]["byte_cost"] == 50

    # the edge's extra cost of encoding, as 'ddnn bench inference --run' reports it
    from ddnn_jax.stages.timing import InferenceBenchConfig, _encoder_lines, build_programs

    bench = InferenceBenchConfig(run=run.root, runs=2, program_calls=3)
    image = np.zeros((1, 28, 28, 1), np.uint8)
    (line,) = _encoder_lines(run, build_programs(bench).edge["only"], image, bench, {})
    assert line["bottleneck"] == "k2-b4-s2" and line["edge_ms"] > 0 and line["edge_encoder_ms"] > 0
    # a 2x2 convolution from 32 channels to 2 at 7x7 positions: 2 FLOPs a multiply-add, and a sigmoid
    assert 2 * 7 * 7 * 2 * (2 * 2 * 32) <= line["encoder_flops"] < 0.05 * line["edge_flops"]

    # served, its codes cross the wire as results.json scored them (the entropy-coded wire takes
    # the same route: test_wire)
    # exported with the priced family, the graph computes the codes of its bottleneck
    from ddnn_jax.deploy.device_edge import DeviceEdgeConfig, run_device_edge
    from ddnn_jax.interop.export_edge import ExportConfig, export_edge

    exported, info = export_edge(run, tmp_path / "export", ExportConfig(family="logits-k2-b4-s2-lam50"))
    assert info["outputs"][2] == {"name": "codes", "shape": ["N", 7, 7, 2], "dtype": "uint8"}
    assert info["verification"]["passed"] and info["verification"]["codes_differing"] == 0
    assert info["bottleneck"] == {"name": "k2-b4-s2", **deployed.describe()}

    cloud = CloudHalf.load(run, max_batch=16)  # compiled as requests come (no warm-up: test time)
    with BackgroundServer(cloud_app(cloud)) as url:
        config = EdgeConfig(url, target=0.5, wire="bottleneck", batch=16)
        _, report = run_edge(run, config, out=tmp_path / "bottleneck.json")
        device = DeviceEdgeConfig(str(exported), url, target=0.5, wire="bottleneck-zlib", batch=16, limit=512)
        _, from_graph = run_device_edge(device, out=tmp_path / "device.json")
    assert from_graph["in_process"]["decisions_differing"] == 0 and from_graph["fallback_rate"] == 0
    assert from_graph["in_process"]["predictions_differing"] == 0  # the export's own reference
    in_process = report["in_process"]
    assert report["fallback_rate"] == 0 and in_process["decisions_differing"] == 0
    assert in_process["predictions_differing"] <= 2  # a code may round the other way
    assert in_process["results_json_accuracy"] == point["accuracy"] == in_process["accuracy"]
    assert report["uplink"]["route"] == "/v1/codes/k2-b4-s2" and report["uplink"]["param"] == 4
    assert report["bytes"]["payload_per_offload"] == 49


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("code_shape", [(7, 7, 2), (14, 14, 1), (7, 7, 3)])
def test_codes_pack_to_their_bits_and_back(bits, code_shape):
    codes = np.random.default_rng(0).integers(0, 2**bits, (5, *code_shape)).astype(np.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (5, -(-int(np.prod(code_shape)) * bits // 8))
    np.testing.assert_array_equal(unpack_codes(packed, bits, code_shape), codes)
    if bits == 4:  # two values a byte, the first in the high half
        assert packed[0, 0] == codes.reshape(5, -1)[0, 0] << 4 | codes.reshape(5, -1)[0, 1]
    # entropy coding never costs more than its flag byte, wins on redundant codes, and decodes back
    coded = entropy_code(codes, bits)
    assert all(len(c) <= packed.shape[1] + 1 for c in coded)
    assert [entropy_decode(c, packed.shape[1]).tolist() for c in coded] == packed.tolist()
    constant = entropy_code(np.zeros_like(codes), bits)
    assert all(len(c) < packed.shape[1] / 4 for c in constant)
    assert not entropy_decode(constant[0], packed.shape[1]).any()


def test_a_priced_family_labels_by_the_benefit_less_lambda_per_kb():
    from ddnn_jax.core.labels import correctness
    from ddnn_jax.core.outputs import SplitOutputs
    from ddnn_jax.core.router_net import RouterConfig
    from ddnn_jax.stages.route import Through, meta_labels

    rng = np.random.default_rng(0)
    logits = lambda n: rng.normal(size=(n, 10)).astype(np.float32)
    outputs = {
        s: SplitOutputs(logits(n), logits(n), rng.integers(0, 10, n), 1)
        for s, n in (("train", 300), ("val", 100), ("test", 100))
    }
    behind = {s: logits(len(o.labels)) for s, o in outputs.items()}  # the cloud behind the bottleneck
    coded = {s: rng.integers(20, 90, len(o.labels)) for s, o in outputs.items()}
    targets = np.asarray([0.3, 0.7], np.float32)
    config = RouterConfig(targets=(0.3, 0.7), bottleneck="k1-b8-s1", byte_cost=2.0)
    meta = meta_labels(outputs, targets, config, Through(behind, coded))
    for split, o in outputs.items():  # brute force: B - lambda * kB, thresholded at its train quantiles
        c = correctness(o.local_logits, behind[split], o.labels)
        priced = np.asarray(c.benefit) - 2.0 * coded[split] / 1000
        if split == "train":
            thresholds = np.quantile(priced, targets)
            np.testing.assert_allclose(meta.thresholds, thresholds, rtol=1e-5)
        np.testing.assert_array_equal(meta.targets[split], priced[None, :] >= meta.thresholds[:, None])
    free = meta_labels(outputs, targets, dataclasses.replace(config, byte_cost=0.0), Through(behind, coded))
    assert not np.array_equal(free.targets["train"], meta.targets["train"])  # the bytes moved labels
    for bad, fragment in (
        (RouterConfig(byte_cost=1.0), "name the bottleneck"),
        (RouterConfig(bottleneck="k1-b8-s1", byte_cost=-1.0), "non-negative"),
        (RouterConfig(bottleneck="k1-b8-s1", fit_split="oof"), "no bottleneck"),
    ):
        with pytest.raises(ValueError, match=fragment):
            bad.check()

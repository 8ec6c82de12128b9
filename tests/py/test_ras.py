"""`fennec doctor` as a user runs it, and `fennec serve`'s energy, cost and health surfaces: on this machine (a VM with no RAPL, sensors, EDAC or GPU,
where every source must say "unavailable" with a reason and never show a zero) and on the fake
sysfs tree of tests/fixtures/ras, whose values come from the files written by
make_ras_fixtures.py."""
import json
import os
import shutil
import subprocess
import threading
import time

import gguf
import openai
import pytest

from conftest import ROOT, SMOL
from server_util import Server

SYSFS = ROOT / "tests/fixtures/ras/sysfs"


def doctor(fennec, *args):
    r = subprocess.run([fennec, "doctor", "--no-bandwidth", *args], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_doctor_report_on_this_machine(fennec):
    r = doctor(fennec)
    for section in ("CPU", "Kernels", "Telemetry", "Energy metering", "Health"):
        assert section in r.stdout
    assert "scalar" in r.stdout and "FAIL" not in r.stdout
    j = json.loads(doctor(fennec, "--json").stdout)
    assert j["ok"] is True
    assert all(k["ok"] for k in j["kernels"])
    assert {k["path"] for k in j["kernels"]} >= {"scalar"}
    sources = {t["source"] for t in j["telemetry"]}
    assert sources == {"powercap", "hwmon", "thermal", "edac", "cpufreq", "nvml"}
    for t in j["telemetry"]:
        # Either a value that was read, or a reason; never an invented number.
        assert ("value" in t) != ("unavailable" in t) or "text" in t, t
        if "unavailable" in t:
            assert t["unavailable"]
    if not any("value" in t for t in j["telemetry"] if t["source"] == "powercap"):
        assert j["energy"]["source"] == "estimated"
        assert j["energy"]["default_device_watts"] >= 10


def test_doctor_reads_fake_sysfs(fennec):
    j = json.loads(doctor(fennec, "--json", "--sysfs-root", str(SYSFS)).stdout)
    by_name = {t["name"]: t for t in j["telemetry"]}
    assert by_name["intel-rapl:0/package-0"]["value"] == 123456789
    assert by_name["k10temp/Tctl"]["value"] == 45.25
    assert by_name["thermal_zone0/x86_pkg_temp"]["value"] == 51
    assert by_name["mc0/ce_count"]["value"] == 3
    assert by_name["mc0/ue_count"]["value"] == 0
    assert by_name["cpufreq/scaling_cur_freq (mean)"]["value"] == 2700
    assert j["energy"]["source"] == "measured"
    assert {h["device"]: h["state"] for h in j["health"]}["mem:mc0"] == "healthy"


def test_doctor_reads_gpus_through_a_fake_nvml(fennec, tmp_path):
    """The dlopen'ed NVML path end to end, with tests/fixtures/ras/fake_nvml.c standing in for the
    driver: values, "not supported" counters as unavailable, throttle reasons, remaps, Xids
    (application Xids skipped), and the pending remap making gpu:1 suspect."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to build the fake NVML library")
    lib = tmp_path / "libnvidia-ml.so.1"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(ROOT / "tests/fixtures/ras/fake_nvml.c")],
                   check=True)
    r = subprocess.run([fennec, "doctor", "--no-bandwidth", "--json"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "FENNEC_NVML_LIBRARY": str(lib)})
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    gpu = {(t["device"], t["name"]): t for t in j["telemetry"] if t["source"] == "nvml"}
    assert gpu[("gpu", "driver_version")]["text"] == "999.99-fake"
    assert gpu[("gpu:0", "name")]["text"] == "Fake GPU A"
    assert gpu[("gpu:0", "temperature")]["value"] == 61
    assert gpu[("gpu:0", "power")]["value"] == pytest.approx(250.123)
    assert gpu[("gpu:0", "total_energy")]["value"] == 123456789 * 1000  # mJ -> uJ
    assert gpu[("gpu:0", "ecc_corrected_volatile")]["value"] == 5
    assert gpu[("gpu:0", "ecc_corrected_aggregate_dram")]["value"] == 12
    sram = gpu[("gpu:0", "ecc_corrected_volatile_sram")]
    assert "value" not in sram and "not supported" in sram["unavailable"]
    assert gpu[("gpu:0", "clocks_throttled_by_heat_or_power")]["value"] == 0  # idle is not throttling
    assert gpu[("gpu:1", "clocks_throttled_by_heat_or_power")]["value"] == 1
    assert gpu[("gpu:1", "remapped_rows")]["value"] == 4
    assert gpu[("gpu:1", "remap_pending")]["value"] == 1
    assert gpu[("gpu:0", "xid_critical_errors")]["value"] == 0  # Xid 13 is the application's
    assert gpu[("gpu:1", "xid_critical_errors")]["value"] == 1  # Xid 79: fell off the bus
    health = {h["device"]: h for h in j["health"]}
    assert health["gpu:0"]["state"] == "healthy"
    assert health["gpu:1"]["state"] == "suspect" and "remap" in health["gpu:1"]["reason"]


def test_doctor_records_a_replayable_trace(fennec, tmp_path):
    out = tmp_path / "trace.jsonl"
    doctor(fennec, "--sysfs-root", str(SYSFS), "--record", str(out), "--frames", "3",
           "--interval", "0.05")
    frames = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(frames) == 3
    assert frames[0]["t"] <= frames[1]["t"] <= frames[2]["t"]
    pkg = [s for s in frames[0]["samples"] if s["name"] == "intel-rapl:0/package-0"][0]
    assert pkg["kind"] == "energy_uj" and pkg["wrap"] == 262143328850


def test_server_usage_energy_cost_metrics_and_ras(fennec):
    """Estimated energy (this VM has no counter) labelled in usage and /metrics, cost from the
    declared prices; a replayed corrected-error trace drives /v1/ras through suspect to unhealthy
    and readiness to 503, while the API keeps answering."""
    if not SMOL.exists():
        pytest.skip("model not found: run scripts/fetch_models.sh")
    watts, kwh, hour = 40.0, 0.5, 3.6
    srv = Server(SMOL, "--ctx", "512", "--kv-mem", "64M", "--device-watts", str(watts), "--price-kwh",
                 str(kwh), "--price-hour", str(hour), "--ras-trace",
                 str(ROOT / "tests/fixtures/ras/ce_rising.jsonl"), "--ras-interval", "0.5")
    try:
        client = openai.OpenAI(base_url=srv.base + "/v1", api_key="x", max_retries=0, timeout=300)
        r = client.chat.completions.create(model=client.models.list().data[0].id, max_tokens=8, temperature=0,
                                           messages=[{"role": "user", "content": "Hello"}])
        u = r.usage.model_dump()
        assert u["energy_source"] == "estimated"
        assert u["energy_joules"] > 0
        # Cost = kWh x price + busy hours x price, with busy time = joules / watts when estimated.
        busy_s = u["energy_joules"] / watts
        assert u["cost_usd"] == pytest.approx(u["energy_joules"] / 3.6e6 * kwh + busy_s / 3600 * hour, rel=1e-6)
        m = srv.metrics()
        key = [k for k in m if k.startswith("fennec:energy_joules_total{")]
        assert len(key) == 1 and 'source="estimated"' in key[0]
        assert m[key[0]] == pytest.approx(u["energy_joules"], rel=1e-6)
        assert srv.metric("fennec:cost_usd_total") == pytest.approx(u["cost_usd"], rel=1e-6)

        deadline = time.time() + 60
        while True:
            status, ras = srv.request("GET", "/v1/ras")
            assert status == 200
            if ras["state"] == "unhealthy" or time.time() > deadline:
                break
            time.sleep(0.2)
        assert ras["source"] == "trace" and ras["state"] == "unhealthy", ras
        assert [e["to"] for e in ras["events"]] == ["suspect", "unhealthy"]
        assert all(e["device"] == "mem:mc0" for e in ras["events"])
        status, body = srv.request("GET", "/v1/health/ready")
        assert status == 503 and "uncorrected" in body["message"]
        assert srv.request("GET", "/v1/health/live")[0] == 200
        assert srv.metric("fennec:device_health_state") == 2  # mem:mc0 unhealthy, thermal healthy
        assert any(k.startswith("fennec:device_temperature_celsius{") for k in srv.metrics())
        # Serving goes on: readiness only takes the server out of a load balancer's rotation.
        r2 = client.completions.create(model=r.model, prompt="One", max_tokens=2)
        assert r2.usage.completion_tokens >= 1
    finally:
        assert srv.stop() == 0


def test_server_measured_energy_from_a_live_counter(fennec, tmp_path):
    """A fake powercap tree whose package counter a thread advances (50 W): each request's energy
    is measured from it, labelled "measured", and adds up in /metrics."""
    if not SMOL.exists():
        pytest.skip("model not found: run scripts/fetch_models.sh")
    zone = tmp_path / "sys/class/powercap/intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    wrap = 262143328850
    (zone / "max_energy_range_uj").write_text(f"{wrap}\n")
    energy = zone / "energy_uj"
    value = [wrap - 2_000_000]  # wraps 40 ms in
    energy.write_text(f"{value[0]}\n")
    stop = threading.Event()

    def advance():
        t = time.monotonic()
        while not stop.is_set():
            time.sleep(0.001)
            now = time.monotonic()
            value[0] = (value[0] + int((now - t) * 50e6)) % wrap  # 50 W in microjoules per second
            t = now
            tmp = zone / "energy_uj.tmp"
            tmp.write_text(f"{value[0]}\n")
            os.replace(tmp, energy)  # atomic: a reader never sees half a number

    th = threading.Thread(target=advance, daemon=True)
    th.start()
    srv = Server(SMOL, "--ctx", "512", "--kv-mem", "64M", "--sysfs-root", str(tmp_path), "--price-kwh", "1")
    try:
        assert any("energy: measured" in line for line in srv.log), "".join(srv.log)
        client = openai.OpenAI(base_url=srv.base + "/v1", api_key="x", max_retries=0, timeout=300)
        total = 0.0
        for prompt in ("Hello", "Name a colour."):
            r = client.chat.completions.create(model=client.models.list().data[0].id, max_tokens=16,
                                               temperature=0, messages=[{"role": "user", "content": prompt}])
            u = r.usage.model_dump()
            assert u["energy_source"] == "measured", u
            assert 0 < u["energy_joules"] < 1000
            assert u["cost_usd"] == pytest.approx(u["energy_joules"] / 3.6e6, rel=1e-6)  # price-hour 0
            total += u["energy_joules"]
        m = srv.metrics()
        key = [k for k in m if k.startswith("fennec:energy_joules_total{")]
        assert len(key) == 1 and 'source="measured"' in key[0]
        assert m[key[0]] == pytest.approx(total, rel=1e-6)
    finally:
        stop.set()
        th.join()
        assert srv.stop() == 0


def test_server_scrub_finds_a_weight_changed_under_it(fennec, tmp_path):
    """Fault injection: one bit of a tensor flipped in the model file while the server runs (the
    mapping is shared, so the served weights change, as a DRAM flip would change them). The
    scrubber finds it, names the tensor, and the device "weights" turns unhealthy."""
    if not SMOL.exists():
        pytest.skip("model not found: run scripts/fetch_models.sh")
    model = tmp_path / "model.gguf"
    shutil.copy(SMOL, model)
    reader = gguf.GGUFReader(str(model))
    victim = reader.tensors[len(reader.tensors) // 2]
    name, offset = victim.name, int(victim.data_offset) + int(victim.n_bytes) // 2
    del reader
    srv = Server(model, "--ctx", "256", "--kv-mem", "32M", "--ras-interval", "0.1", "--scrub-mb", "4096")

    def ras_state(pred, what):
        deadline = time.time() + 60
        while time.time() < deadline:
            status, ras = srv.request("GET", "/v1/ras")
            assert status == 200
            if pred(ras):
                return ras
            time.sleep(0.1)
        raise AssertionError(f"{what}: {ras}")

    try:
        ras = ras_state(lambda r: {"scrub_mismatches", "canary_mismatches"} <=
                        {t["name"] for t in r["telemetry"] if "value" in t},
                        "the reference pass never finished")
        # The canary ran its reference answer before the server turned ready; the NaN guard's
        # counts are there too.
        by_name = {t["name"]: t for t in ras["telemetry"]}
        assert by_name["canary_mismatches"]["value"] == 0
        assert by_name["nan_guard/recomputed_steps"]["value"] == 0
        assert by_name["nan_guard/failed_steps"]["value"] == 0
        assert srv.request("GET", "/v1/health/ready")[0] == 200
        with open(model, "r+b") as f:
            f.seek(offset)
            b = f.read(1)
            f.seek(offset)
            f.write(bytes([b[0] ^ 0x04]))
        ras = ras_state(lambda r: r["state"] == "unhealthy", "the flipped bit was not found")
        weights = [d for d in ras["devices"] if d["device"] == "weights"][0]
        assert weights["state"] == "unhealthy"
        assert name + " changed in memory" in weights["reason"], weights
        status, body = srv.request("GET", "/v1/health/ready")
        assert status == 503 and name in body["message"]
    finally:
        assert srv.stop() == 0

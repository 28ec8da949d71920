"""The facerec command against the real service; and the metrics it leaves behind."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facerec.messages import sha256_hex
from tests.services import FACES, ROOT, Env, free_port, http, publish_raw, wait_until

pytestmark = pytest.mark.slow
FACEREC = str(Path(sys.executable).with_name("facerec"))


def facerec(env: Env, rest: str, *args: str, timeout: float = 300
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FACEREC, "--rest", rest, *args], cwd=ROOT, env=env.environ(),
                          capture_output=True, text=True, timeout=timeout)


def test_scan_wait_prints_every_image_with_its_matches_and_a_summary(env: Env) -> None:
    rest = env.start_rest()
    worker = env.start_worker()
    result = facerec(env, rest, "scan", str(FACES / "kit_harington"), str(FACES / "rose_leslie"),
                     str(FACES / "groups/kit_with_rose.jpg"), "--wait", "-j", "3")
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert lines["kit_with_rose.jpg"] == ("2 face(s); matches: img1.jpg, img2.jpg, john1.jpeg, "
                                          "john2.jpeg, johnsnow_test1.jpg")
    assert lines["john1.jpeg"] == "1 face(s); matches: john2.jpeg, johnsnow_test1.jpg, " \
                                  "kit_with_rose.jpg"
    assert lines["img1.jpg"] == "1 face(s); matches: img2.jpg, kit_with_rose.jpg"
    # Not a terminal: one plain progress line per image on stderr, then the summary.
    assert len(re.findall(r"^\[\d/6\] \S+: queued$", result.stderr, re.M)) == 6
    assert "sent 6, deduplicated 0, failed 0" in result.stderr

    again = facerec(env, rest, "--json", "scan", str(FACES / "groups/kit_with_rose.jpg"),
                    "--wait")
    assert again.returncode == 0
    (entry,) = json.loads(again.stdout)
    assert entry["outcome"] == "duplicate" and entry["faces"] == 2
    assert entry["hash"] == sha256_hex((FACES / "groups/kit_with_rose.jpg").read_bytes())
    assert len(entry["matches"]) == 5

    verbose = facerec(env, rest, "match", "-v", str(FACES / "rose_leslie/img1.jpg"))
    rows = [line.split("  ") for line in verbose.stdout.splitlines()]
    assert sorted(r[2] for r in rows) == ["img2.jpg", "kit_with_rose.jpg"]
    assert all(0 < float(r[1]) <= 0.6 and len(r[0]) == 64 for r in rows)

    status = facerec(env, rest, "status", entry["hash"])
    assert "status:  done" in status.stdout and "faces:   2" in status.stdout

    # People: Kit (3 photos and the group) and Rose (2 and the group).
    listed = json.loads(facerec(env, rest, "--json", "people").stdout)
    assert listed["total"] == 2 and [p["faces"] for p in listed["people"]] == [4, 3]
    kit, rose = (p["id"] for p in listed["people"])
    named = facerec(env, rest, "people", "name", str(rose), "Rose Leslie")
    assert named.returncode == 0 and "3 face(s)  Rose Leslie" in named.stdout, named.stderr
    shown = facerec(env, rest, "people", str(rose)).stdout.splitlines()
    assert "Rose Leslie" in shown[0] and len(shown) == 4
    assert sorted(line.split("  ")[-1] for line in shown[1:]) == [
        "img1.jpg", "img2.jpg", "kit_with_rose.jpg"]
    refused = facerec(env, rest, "people", "merge", str(kit), str(rose))
    assert refused.returncode == 1 and "a photo has a face of each" in refused.stderr
    assert facerec(env, rest, "people", "name", "x", "y").returncode != 0
    group = sha256_hex((FACES / "groups/kit_with_rose.jpg").read_bytes())
    face = next(f["face"] for f in json.loads(facerec(env, rest, "--json", "people", str(rose))
                                              .stdout)["faces"] if f["hash"] == group)
    split = facerec(env, rest, "people", "split", str(rose), f"{group}:{face}")
    assert split.returncode == 0 and "1 face(s)" in split.stdout, split.stderr
    apart = facerec(env, rest, "people", "apart", str(kit), str(rose))
    assert apart.returncode == 0 and "4 face(s)" in apart.stdout, apart.stderr

    # Metrics: rest counted the scans, the worker its images and faces.
    text = http("GET", f"{rest}/metrics").body.decode()
    assert 'facerec_scans_accepted_total{kind="upload",outcome="queued"} 6.0' in text
    assert 'facerec_scans_accepted_total{kind="upload",outcome="duplicate"} 1.0' in text
    port = env.worker_metrics_port(worker)
    worker_text = http("GET", f"http://127.0.0.1:{port}/metrics").body.decode()
    assert 'facerec_images_total{outcome="processed"} 6.0' in worker_text
    assert "facerec_faces_found_total 7.0" in worker_text
    assert "facerec_index_faces 7.0" in worker_text
    assert "facerec_processing_seconds_count 6.0" in worker_text


def test_errors_are_one_line_and_a_non_zero_exit(env: Env, tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    result = facerec(env, down, "match", "0" * 64)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith(f"facerec: cannot reach facerec at {down}")

    rest = env.start_rest()
    unknown = facerec(env, rest, "status", "0" * 64)
    assert unknown.returncode == 1
    assert unknown.stderr == "facerec: HTTP 404: no image with this hash was ever scanned\n"

    junk = tmp_path / "notes.jpg"
    junk.write_text("not an image")
    scanned = facerec(env, rest, "scan", str(junk), str(tmp_path / "missing.png"))
    assert scanned.returncode == 1
    assert "sent 0, deduplicated 0, failed 2" in scanned.stderr
    assert "notes.jpg: HTTP 400: not a decodable image" in scanned.stderr
    assert "missing.png: no such file or directory" in scanned.stderr
    assert env.queue_depth() == 0


def test_logs_tails_the_logs_exchange_with_a_pattern(env: Env) -> None:
    rest = env.start_rest()
    tail = subprocess.Popen([FACEREC, "logs", "*.rest.info", "--seconds", "20"], cwd=ROOT,
                            env=env.environ(), stdout=subprocess.PIPE, text=True)
    env.procs.append(tail)
    time.sleep(2)  # let it bind its queue before anything is logged
    http("POST", f"{rest}/scan/image/tail.jpg", (FACES / "obama/obama_small.jpg").read_bytes())
    out, _ = tail.communicate(timeout=60)
    assert re.search(r"\.rest\.info INFO POST /scan/image/tail\.jpg -> 200", out), out
    assert ".rest.debug" not in out


def test_dead_list_shows_reasons_and_requeue_sends_letters_back(env: Env) -> None:
    body = b"definitely not an image"
    publish_raw(env.settings, body, {"schema": 1, "hash": sha256_hex(body),
                                     "name": "junk.jpg", "kind": "upload"})
    worker = env.start_worker()
    wait_until(lambda: env.queue_depth("toWorker.images.dead") == 1, 60, "a dead letter")
    env.stop(worker)
    listed = facerec(env, "http://unused", "dead", "list")
    assert listed.returncode == 0, listed.stderr
    assert f"{sha256_hex(body)[:12]}  junk.jpg  (deliveries: 1)  not a decodable image" \
        in listed.stdout
    as_json = json.loads(facerec(env, "http://unused", "--json", "dead", "list").stdout)
    assert [(d["name"], d["deliveries"]) for d in as_json] == [("junk.jpg", 1)]
    moved = facerec(env, "http://unused", "--json", "dead", "requeue")
    assert json.loads(moved.stdout) == {"requeued": 1}
    assert env.queue_depth("toWorker.images.dead") == 0
    assert env.queue_depth() == 1

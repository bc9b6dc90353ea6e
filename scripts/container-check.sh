#!/usr/bin/env bash
# The Dockerfile's runtime stage, checked without a Docker engine: lay out its files as the stage
# does (root-owned, under a temporary root), run its RUN steps there, then its ENTRYPOINT and CMD
# as its USER with its ENV, and see the gateway turn ready, answer, save a change where the image
# says state lives, write nothing else, and exit 0 on SIGTERM.
#
#   scripts/container-check.sh target/debug/gauntlet
#
# Paths of the image (/opt/gauntlet, /var/lib/gauntlet, ...) are rewritten to the temporary root.
# `apt-get` steps (the image's packages) are skipped; `useradd` is checked, not run (no user is
# added to this machine); the listen address is moved to a free loopback port.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$(realpath "${1:?usage: $0 path/to/gauntlet}")
[ "$(id -u)" = 0 ] || { echo "container-check: run as root (it switches to the image's user)" >&2; exit 1; }
exec python3 - "$binary" <<'PY'
import glob, json, os, re, shlex, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request

binary = sys.argv[1]
lines, current = [], ""
for raw in open("Dockerfile"):
    raw = raw.rstrip("\n")
    if raw.lstrip().startswith("#") and not current:
        continue
    if raw.endswith("\\"):
        current += raw[:-1] + " "
        continue
    current += raw
    if current.strip():
        lines.append(current.strip())
    current = ""
stages = [i for i, l in enumerate(lines) if l.upper().startswith("FROM ")]
runtime = lines[stages[-1] + 1:]

root = tempfile.mkdtemp(prefix="gauntlet-image-")
os.chmod(root, 0o755)
def inside(path):
    return os.path.join(root, path.lstrip("/"))
def rewrite(text):
    # Absolute paths of the image, moved under the temporary root.
    return re.sub(r"(?<![\w.])(/(?:opt|var|etc|srv|data|home)(?:/[\w.+-]*)*)", lambda m: inside(m.group(1)), text)

workdir, user, env, entrypoint, cmd, uid_added = "/", None, {}, [], [], None
for line in runtime:
    op, _, rest = line.partition(" ")
    op = op.upper()
    if op == "WORKDIR":
        workdir = os.path.join(workdir, rest.strip())
        os.makedirs(inside(workdir), exist_ok=True)
    elif op == "COPY":
        args = shlex.split(rest)
        source_stage = next((a.split("=", 1)[1] for a in args if a.startswith("--from=")), None)
        src, dest = [a for a in args if not a.startswith("--")]
        if source_stage:
            src = {"/out/bin/gauntlet": binary}.get(src) or sorted(glob.glob("target/onnxruntime/libonnxruntime.so*"))[0]
        dest = inside(dest if dest.startswith("/") else os.path.join(workdir, dest))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.isdir(src):
            shutil.copytree(src, dest, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest)
    elif op == "RUN":
        if "apt-get" in rest:
            continue
        if rest.startswith("useradd"):
            uid_added = re.search(r"--uid\s+(\d+)", rest).group(1)
            continue
        subprocess.run(["sh", "-c", rewrite(rest)], check=True, cwd=inside(workdir))
    elif op == "USER":
        user = rest.strip()
    elif op == "ENV":
        for pair in shlex.split(rest):
            key, _, value = pair.partition("=")
            env[key] = value
    elif op == "ENTRYPOINT":
        entrypoint = json.loads(rest)
    elif op == "CMD":
        cmd = json.loads(rest)
assert user and user != "0" and user != "root", "the runtime stage must run as a non-root user"
assert uid_added == user, f"USER {user} is not the uid the stage adds ({uid_added})"
# The image's files are root's, as COPY leaves them.
for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
        path = os.path.join(dirpath, name)
        if os.stat(path).st_uid == 0:
            os.chmod(path, os.stat(path).st_mode & ~0o022)

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); n = s.getsockname()[1]; s.close()
    return n
free, free_grpc = free_port(), free_port()
child_env = {k: rewrite(v) for k, v in env.items()}
assert "GAUNTLET_GRPC_LISTEN" in child_env, "the image sets GAUNTLET_GRPC_LISTEN"
child_env.update(PATH="/usr/bin:/bin", GAUNTLET_LISTEN=f"127.0.0.1:{free}", GAUNTLET_GRPC_LISTEN=f"127.0.0.1:{free_grpc}",
                 HOME="/nonexistent")
command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"] + [rewrite(a) for a in entrypoint + cmd]
print("container-check:", " ".join(command), flush=True)
started = time.time()
child = subprocess.Popen(command, cwd=inside(workdir), env=child_env)
base = f"http://127.0.0.1:{free}"
def call(path, body=None):
    request = urllib.request.Request(base + path, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status, json.loads(answer.read())
status = None
while time.time() - started < 120:
    if child.poll() is not None:
        sys.exit(f"container-check: the gateway exited with {child.returncode} before turning ready")
    try:
        status, _ = call("/v2/health/ready")
        break
    except Exception:
        time.sleep(0.1)
assert status == 200, "the gateway did not turn ready"
row = open("models/breast-cancer/holdout.csv").read().splitlines()[1].split(",")[:-1]
status, answer = call("/v2/models/breast-cancer/infer",
                      {"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": [float(x) for x in row]}]})
assert status == 200 and answer["outputs"], answer
status, _ = call("/admin/models/breast-cancer/promote", {"version": "2", "reason": "container check"})
assert status == 200
state = child_env["GAUNTLET_STATE_DIR"]
assert os.path.exists(os.path.join(state, "deployments.json")), "the change was not saved where the image keeps state"
child.send_signal(signal.SIGTERM)
code = child.wait(timeout=60)
assert code == 0, f"exit status {code} on SIGTERM"
written = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if os.stat(os.path.join(d, f)).st_uid == int(user)]
outside = [p for p in written if not p.startswith(inside("/var/lib/gauntlet"))]
assert not outside, f"written outside /var/lib/gauntlet: {outside}"
print(f"container-check: ready, answered, saved a change, exited 0 on SIGTERM as uid {user}; "
      f"{len(written)} files written, all under /var/lib/gauntlet")
shutil.rmtree(root)
PY

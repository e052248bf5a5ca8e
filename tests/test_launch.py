"""launch/ scripts: dry runs print the right commands; shellcheck passes.

Every script runs under bash with --dry-run (or --help, or bad arguments), with
fake `gcloud`, `gsutil` and `srun` first on PATH that record any call: a dry
run must call none of them. The printed commands are parsed back with shlex,
so the tests also check that they are correctly shell-quoted.
"""

from __future__ import annotations

import os
from pathlib import Path
import re
import shlex
import shutil
import stat
import subprocess
import time

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = (
  "tpu_create.sh",
  "tpu_setup.sh",
  "tpu_run.sh",
  "tpu_logs.sh",
  "tpu_fetch.sh",
  "tpu_delete.sh",
  "tpu_spot_loop.sh",
  "gpu.sh",
)
TPU_COMMON_OPTIONS = ("--tpu-name", "--zone", "--project", "--dry-run")

SCOPE = [
  "--tpu-name",
  "sc-v4",
  "--zone",
  "us-central2-b",
  "--project",
  "my-proj",
]
GS_WORKDIR = "gs://my-bucket/superconv/default"
GS_TFDS = "gs://my-bucket/tensorflow_datasets"
TRAIN = (
  f"python -m superconv.main --config configs/default.py --workdir {GS_WORKDIR}"
)

# Variables the scripts read; cleared so that the caller's shell cannot leak
# into a test.
SCRIPT_ENV = (
  "TPU_NAME",
  "ZONE",
  "PROJECT",
  "CLOUDSDK_CORE_PROJECT",
  "ACCELERATOR_TYPE",
  "RUNTIME_VERSION",
  "QUEUED_RESOURCE_ID",
  "CONFIG",
  "WORKDIR",
  "TFDS_DATA_DIR",
  "PYTHON",
  "DRY_RUN",
)


@pytest.fixture
def fake_bin(tmp_path):
  """A PATH directory whose gcloud/gsutil/srun record calls and fail."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = tmp_path / "calls.log"
  for name in ("gcloud", "gsutil", "srun"):
    _write_exe(
      bin_dir / name,
      f'#!/bin/sh\necho "{name} $*" >> {shlex.quote(str(calls))}\nexit 97\n',
    )
  yield bin_dir
  assert not calls.exists(), f"a dry run called: {calls.read_text()}"


def _write_exe(path: Path, text: str) -> None:
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _env(fake_bin: Path, extra: dict[str, str] | None = None) -> dict:
  env = {
    k: v
    for k, v in os.environ.items()
    if k not in SCRIPT_ENV and not k.startswith(("SLURM_", "SUPERCONV_"))
  }
  env["PATH"] = f"{fake_bin}{os.pathsep}{env.get('PATH', '')}"
  env.update(extra or {})
  return env


def launch(fake_bin, script, *args, env=None, check=True):
  proc = subprocess.run(
    ["bash", str(LAUNCH / script), *args],
    cwd=REPO,
    env=_env(fake_bin, env),
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
  )
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


def commands(stdout: str) -> list[list[str]]:
  """argv of every '+ ' line; every other stdout line must be a comment."""
  argvs = []
  for line in stdout.splitlines():
    if line.startswith("+ "):
      argvs.append(shlex.split(line[2:]))
    else:
      assert not line.strip() or line.startswith("# "), line
  return argvs


def dry(fake_bin, script, *args, env=None) -> list[list[str]]:
  return commands(launch(fake_bin, script, "--dry-run", *args, env=env).stdout)


def remote_command(argv: list[str]) -> str:
  (command,) = [
    a[len("--command=") :] for a in argv if a.startswith("--command=")
  ]
  return command


def assert_valid_shell(command: str) -> None:
  proc = subprocess.run(
    ["bash", "-n", "-c", command], capture_output=True, text=True, check=False
  )
  assert proc.returncode == 0, (command, proc.stderr)


def head_commit() -> str:
  return subprocess.run(
    ["git", "-C", str(REPO), "rev-parse", "HEAD"],
    capture_output=True,
    text=True,
    check=True,
  ).stdout.strip()


# --- tpu_create.sh ------------------------------------------------------------


def test_create_on_demand(fake_bin):
  assert dry(
    fake_bin, "tpu_create.sh", *SCOPE, "--accelerator-type", "v4-8"
  ) == [
    [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "create",
      "sc-v4",
      "--zone=us-central2-b",
      "--project=my-proj",
      "--accelerator-type=v4-8",
      "--version=tpu-ubuntu2204-base",
    ]
  ]


def test_create_spot_uses_a_queued_resource(fake_bin):
  assert dry(
    fake_bin,
    "tpu_create.sh",
    *SCOPE,
    "--accelerator-type=v5litepod-8",
    "--spot",
    "--",
    "--network=my-net",
  ) == [
    [
      "gcloud",
      "compute",
      "tpus",
      "queued-resources",
      "create",
      "sc-v4",
      "--node-id=sc-v4",
      "--zone=us-central2-b",
      "--project=my-proj",
      "--accelerator-type=v5litepod-8",
      "--runtime-version=v2-alpha-tpuv5-lite",
      "--spot",
      "--network=my-net",
    ]
  ]


def test_create_from_environment_variables(fake_bin):
  env = {
    "TPU_NAME": "sc-env",
    "ZONE": "europe-west4-a",
    "PROJECT": "p2",
    "ACCELERATOR_TYPE": "v5p-8",
    "QUEUED_RESOURCE_ID": "qr-1",
  }
  ((argv),) = dry(fake_bin, "tpu_create.sh", "--spot", env=env)
  assert argv[4:] == [
    "create",
    "qr-1",
    "--node-id=sc-env",
    "--zone=europe-west4-a",
    "--project=p2",
    "--accelerator-type=v5p-8",
    "--runtime-version=v2-alpha-tpuv5",
    "--spot",
  ]
  # An option beats its environment variable.
  ((argv),) = dry(
    fake_bin,
    "tpu_create.sh",
    "--zone",
    "us-east5-a",
    "--runtime-version",
    "custom-image",
    env=env,
  )
  assert "--zone=us-east5-a" in argv and "--version=custom-image" in argv


# --- tpu_setup.sh -------------------------------------------------------------


def test_setup_copies_the_repo_to_all_workers_and_installs(fake_bin):
  archive, scp, ssh = dry(fake_bin, "tpu_setup.sh", *SCOPE)
  tarball = archive[archive.index("-o") + 1]
  assert archive[:5] == ["git", "-C", str(REPO), "archive", "--format=tar.gz"]
  assert archive[-1] == "HEAD"
  assert scp == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "scp",
    tarball,
    "sc-v4:superconv.tar.gz",
    "--worker=all",
    "--zone=us-central2-b",
    "--project=my-proj",
  ]
  assert ssh[:9] == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "ssh",
    "sc-v4",
    "--worker=all",
    "--zone=us-central2-b",
    "--project=my-proj",
  ]
  remote = remote_command(ssh)
  assert_valid_shell(remote)
  assert "tar -xzf $HOME/superconv.tar.gz -C $HOME/superconv.new" in remote
  assert "-m venv --clear $HOME/superconv-venv" in remote
  assert (
    "$HOME/superconv-venv/bin/pip install -q 'jax[tpu]' -e '.[tfds,gcs]'"
    in remote
  )


def test_setup_options(fake_bin):
  archive, _, ssh = dry(
    fake_bin,
    "tpu_setup.sh",
    *SCOPE,
    "--ref",
    "v1.0",
    "--python",
    "python3.12",
    "--jax-spec",
    "jax[tpu]==0.10.0",
    "--extras",
    "",
  )
  assert archive[-1] == "v1.0"
  remote = remote_command(ssh)
  assert "PY=python3.12;" in remote
  assert "pip install -q 'jax[tpu]==0.10.0' -e .;" in remote


# --- tpu_run.sh ---------------------------------------------------------------


def test_run_starts_the_trainer_on_all_workers_under_nohup(fake_bin):
  ((ssh),) = dry(
    fake_bin,
    "tpu_run.sh",
    *SCOPE,
    "--config",
    "configs/default.py",
    "--workdir",
    GS_WORKDIR,
    "--tfds-data-dir",
    GS_TFDS,
  )
  assert ssh[:9] == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "ssh",
    "sc-v4",
    "--worker=all",
    "--zone=us-central2-b",
    "--project=my-proj",
  ]
  remote = remote_command(ssh)
  assert_valid_shell(remote)
  assert f"export TFDS_DATA_DIR={GS_TFDS};" in remote
  assert (
    f"nohup bash -c '{TRAIN}; echo $? > $HOME/superconv-run.exit'" in remote
  )
  assert ">> $HOME/superconv-run.log 2>&1 < /dev/null &" in remote


def test_run_remote_command_runs_detached_and_records_the_exit_status(
  fake_bin, tmp_path
):
  """Executes the printed worker command locally, with a fake trainer."""
  ((ssh),) = dry(
    fake_bin,
    "tpu_run.sh",
    *SCOPE,
    "--config",
    "configs/default.py",
    "--workdir",
    GS_WORKDIR,
    "--tfds-data-dir",
    GS_TFDS,
    "--",
    "--config.note=it's 1",
  )
  home = tmp_path / "home"
  (home / "superconv").mkdir(parents=True)
  (home / "superconv-venv" / "bin").mkdir(parents=True)
  seen = tmp_path / "seen.txt"
  _write_exe(
    home / "superconv-venv" / "bin" / "python",
    "#!/bin/sh\n"
    f'{{ printf "%s\\n" "$PWD" "$TFDS_DATA_DIR" "$@"; }} > {seen}\n'
    "sleep 0.5\nexit 3\n",
  )
  env = {"HOME": str(home), "PATH": os.environ["PATH"]}
  first = subprocess.run(
    ["bash", "-c", remote_command(ssh)],
    env=env,
    capture_output=True,
    text=True,
    timeout=10,
    check=True,
  )
  second = subprocess.run(
    ["bash", "-c", remote_command(ssh)],
    env=env,
    capture_output=True,
    text=True,
    timeout=10,
    check=True,
  )
  assert "started on" in first.stdout
  assert "a run is still going" in second.stdout
  exit_file = home / "superconv-run.exit"
  deadline = time.time() + 10
  while not exit_file.exists() and time.time() < deadline:
    time.sleep(0.05)
  assert exit_file.read_text().strip() == "3"
  assert seen.read_text().splitlines() == [
    str(home / "superconv"),
    GS_TFDS,
    "-m",
    "superconv.main",
    "--config",
    "configs/default.py",
    "--workdir",
    GS_WORKDIR,
    "--config.note=it's 1",
  ]
  assert (home / "superconv-run.log").read_text().count("=== ") == 1


def test_run_requires_a_gs_workdir(fake_bin):
  proc = launch(
    fake_bin,
    "tpu_run.sh",
    "--dry-run",
    *SCOPE,
    "--config",
    "configs/default.py",
    "--workdir",
    "runs/x",
    check=False,
  )
  assert proc.returncode == 2
  assert "--workdir must be a gs://" in proc.stderr


# --- tpu_logs.sh, tpu_fetch.sh, tpu_delete.sh ---------------------------------


def test_logs_worker_0_by_default(fake_bin):
  ((ssh),) = dry(fake_bin, "tpu_logs.sh", *SCOPE)
  assert "--worker=0" in ssh
  assert remote_command(ssh) == "tail -n 100 -F $HOME/superconv-run.log"
  ((ssh),) = dry(
    fake_bin,
    "tpu_logs.sh",
    *SCOPE,
    "--worker",
    "3",
    "--lines=20",
    "--no-follow",
  )
  assert "--worker=3" in ssh and "--zone=us-central2-b" in ssh
  assert remote_command(ssh) == "tail -n 20 $HOME/superconv-run.log"


def test_fetch(fake_bin):
  assert dry(fake_bin, "tpu_fetch.sh", "--workdir", GS_WORKDIR + "/") == [
    ["mkdir", "-p", "runs/default"],
    ["gcloud", "storage", "rsync", "--recursive", GS_WORKDIR, "runs/default"],
  ]
  assert dry(
    fake_bin,
    "tpu_fetch.sh",
    *SCOPE,
    "--workdir",
    GS_WORKDIR,
    "--dest",
    "out dir",
    "--gsutil",
    "--exclude-checkpoints",
    "--log",
  ) == [
    ["mkdir", "-p", "out dir"],
    [
      "gsutil",
      "-m",
      "rsync",
      "-r",
      "-x",
      "^checkpoints/",
      GS_WORKDIR,
      "out dir",
    ],
    [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "scp",
      "sc-v4:superconv-run.log",
      "out dir/worker0.log",
      "--worker=0",
      "--zone=us-central2-b",
      "--project=my-proj",
    ],
  ]


def test_delete(fake_bin):
  # A dry run asks nothing (stdin is empty) and prints the command.
  assert dry(fake_bin, "tpu_delete.sh", *SCOPE) == [
    [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "delete",
      "sc-v4",
      "--zone=us-central2-b",
      "--project=my-proj",
      "--quiet",
    ]
  ]
  assert dry(fake_bin, "tpu_delete.sh", *SCOPE, "--spot", "--yes") == [
    [
      "gcloud",
      "compute",
      "tpus",
      "queued-resources",
      "delete",
      "sc-v4",
      "--zone=us-central2-b",
      "--project=my-proj",
      "--force",
      "--quiet",
    ]
  ]


# --- tpu_spot_loop.sh ---------------------------------------------------------


def test_spot_loop_dry_run_shows_one_pass_in_order(fake_bin):
  argvs = dry(
    fake_bin,
    "tpu_spot_loop.sh",
    *SCOPE,
    "--accelerator-type",
    "v4-8",
    "--spot",
    "--config",
    "configs/default.py",
    "--workdir",
    GS_WORKDIR,
    "--tfds-data-dir",
    GS_TFDS,
    "--max-attempts",
    "3",
    "--",
    "--config.seed=2",
  )
  assert [" ".join(a[:5]) for a in argvs] == [
    "gcloud compute tpus tpu-vm describe",
    "gcloud compute tpus queued-resources describe",
    "gcloud compute tpus queued-resources create",
    "gcloud compute tpus tpu-vm describe",
    f"git -C {REPO} archive --format=tar.gz",
    "gcloud compute tpus tpu-vm scp",
    "gcloud compute tpus tpu-vm ssh",  # setup
    "gcloud compute tpus tpu-vm ssh",  # run
    "gcloud compute tpus tpu-vm ssh",
  ]  # poll worker 0
  assert argvs[0][-1] == "--format=value(state)"
  assert argvs[1][-1] == "--format=value(state.state)"
  assert "--spot" in argvs[2] and "--accelerator-type=v4-8" in argvs[2]
  assert argvs[4][-1] == head_commit()  # The code is pinned once.
  assert "--worker=all" in argvs[5] and "--worker=all" in argvs[6]
  run = remote_command(argvs[7])
  assert "--worker=all" in argvs[7]
  assert f"{TRAIN} --config.seed=2; echo $?" in run
  assert f"export TFDS_DATA_DIR={GS_TFDS}" in run
  status = remote_command(argvs[8])
  assert "--worker=0" in argvs[8]
  assert "cat $HOME/superconv-run.exit" in status
  for argv in argvs[6:]:
    assert_valid_shell(remote_command(argv))


def test_spot_loop_on_demand(fake_bin):
  argvs = dry(
    fake_bin,
    "tpu_spot_loop.sh",
    *SCOPE,
    "--accelerator-type",
    "v4-8",
    "--config",
    "configs/default.py",
    "--workdir",
    GS_WORKDIR,
  )
  assert [" ".join(a[:5]) for a in argvs[:3]] == [
    "gcloud compute tpus tpu-vm describe",
    "gcloud compute tpus tpu-vm create",
    "gcloud compute tpus tpu-vm describe",
  ]


# --- gpu.sh -------------------------------------------------------------------

GPU_ARGS = ("--config", "configs/default.py", "--workdir", "runs/default")
PLAIN = [
  "python",
  "-m",
  "superconv.main",
  "--config",
  "configs/default.py",
  "--workdir",
  "runs/default",
]


def exports(argvs):
  return dict(a[1].split("=", 1) for a in argvs if a[0] == "export")


def test_gpu_one_node_is_the_plain_command(fake_bin):
  assert dry(fake_bin, "gpu.sh", *GPU_ARGS) == [PLAIN]
  assert dry(
    fake_bin, "gpu.sh", *GPU_ARGS, "--gpus", "0,1", "--", "--config.seed=4"
  ) == [["export", "CUDA_VISIBLE_DEVICES=0,1"], PLAIN + ["--config.seed=4"]]


@pytest.mark.parametrize(
  "slurm",
  [
    {
      "SLURM_JOB_NODELIST": "gpu[07-10]",
      "SLURM_NNODES": "4",
      "SLURM_NODEID": "2",
    },
    {
      "SLURM_NODELIST": "gpu[07-10]",
      "SLURM_NNODES": "4",
      "SLURM_NTASKS": "4",
      "SLURM_NODEID": "2",
      "SLURM_PROCID": "2",
    },
  ],
)
def test_gpu_under_slurm(fake_bin, tmp_path, slurm):
  seen = tmp_path / "scontrol.args"
  _write_exe(
    fake_bin / "scontrol",
    f'#!/bin/sh\necho "$*" > {seen}\n'
    'printf "gpu07\\ngpu08\\ngpu09\\ngpu10\\n"\n',
  )
  argvs = dry(fake_bin, "gpu.sh", *GPU_ARGS, env=slurm)
  assert seen.read_text().strip() == "show hostnames gpu[07-10]"
  assert argvs[:3] == [
    ["export", "SUPERCONV_COORDINATOR_ADDRESS=gpu07:12345"],
    ["export", "SUPERCONV_NUM_PROCESSES=4"],
    ["export", "SUPERCONV_PROCESS_ID=2"],
  ]
  assert argvs[3] == PLAIN


def test_gpu_options_and_environment_beat_slurm(fake_bin):
  env = {
    "SLURM_NNODES": "4",
    "SLURM_NODEID": "2",
    "SUPERCONV_COORDINATOR_ADDRESS": "10.0.0.1:9999",
  }
  argvs = dry(fake_bin, "gpu.sh", *GPU_ARGS, "--process-id", "3", env=env)
  assert exports(argvs) == {
    "SUPERCONV_COORDINATOR_ADDRESS": "10.0.0.1:9999",
    "SUPERCONV_NUM_PROCESSES": "4",
    "SUPERCONV_PROCESS_ID": "3",
  }
  argvs = dry(
    fake_bin,
    "gpu.sh",
    *GPU_ARGS,
    "--coordinator-address",
    "node0:1234",
    "--num-processes",
    "2",
    "--process-id",
    "1",
  )
  assert exports(argvs) == {
    "SUPERCONV_COORDINATOR_ADDRESS": "node0:1234",
    "SUPERCONV_NUM_PROCESSES": "2",
    "SUPERCONV_PROCESS_ID": "1",
  }
  # One SLURM task: a plain single-process run.
  assert dry(
    fake_bin,
    "gpu.sh",
    *GPU_ARGS,
    env={"SLURM_NNODES": "1", "SLURM_NODEID": "0"},
  ) == [PLAIN]


@pytest.mark.parametrize(
  "args, message",
  [
    (("--num-processes", "2", "--process-id", "1"), "--coordinator-address"),
    (("--num-processes", "2", "--coordinator-address", "h:1"), "--process-id"),
    (("--process-id", "1", "--coordinator-address", "h:1"), "--num-processes"),
    (
      (
        "--num-processes",
        "2",
        "--process-id",
        "2",
        "--coordinator-address",
        "h:1",
      ),
      "--process-id must be below",
    ),
    (
      (
        "--num-processes",
        "2",
        "--process-id",
        "0",
        "--coordinator-address",
        "h",
      ),
      "--coordinator-address must be host:port",
    ),
  ],
)
def test_gpu_incomplete_multi_process_settings(fake_bin, args, message):
  proc = launch(fake_bin, "gpu.sh", "--dry-run", *GPU_ARGS, *args, check=False)
  assert proc.returncode == 2
  assert message in proc.stderr and len(proc.stderr.splitlines()) == 1


# --- Every script: --help, missing options, quoting, shellcheck ---------------


def script_options(script: str) -> set[str]:
  """The long options a script's argument parser accepts."""
  source = (LAUNCH / script).read_text()
  options = set(
    re.findall(
      r"^\s*(?:-\w \| )?(--[a-z][a-z-]*)"
      r"(?: \| --[a-z-]+=\*)?\)",
      source,
      re.M,
    )
  )
  if "tpu_common_option" in source:
    options.update(TPU_COMMON_OPTIONS)
  return options


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_mentions_every_option(fake_bin, script):
  proc = launch(fake_bin, script, "--help")
  options = script_options(script)
  assert len(options) >= 4, options
  missing = sorted(o for o in options if o not in proc.stdout)
  assert not missing, f"{script} --help lacks {missing}"
  assert "Example" in proc.stdout
  assert proc.stdout.startswith(f"Usage: {script} ")


FULL_ARGS = {
  "tpu_create.sh": [*SCOPE, "--accelerator-type", "v4-8"],
  "tpu_setup.sh": [*SCOPE],
  "tpu_run.sh": [
    *SCOPE,
    "--config",
    "configs/default.py",
    "--workdir",
    GS_WORKDIR,
  ],
  "tpu_logs.sh": [*SCOPE],
  "tpu_fetch.sh": ["--workdir", GS_WORKDIR],
  "tpu_delete.sh": [*SCOPE],
  "tpu_spot_loop.sh": [
    *SCOPE,
    "--accelerator-type",
    "v4-8",
    "--config",
    "configs/default.py",
    "--workdir",
    GS_WORKDIR,
  ],
  "gpu.sh": [*GPU_ARGS],
}
REQUIRED = [(s, o) for s in SCRIPTS for o in FULL_ARGS[s] if o.startswith("--")]


@pytest.mark.parametrize("script, option", REQUIRED)
def test_missing_required_option_exits_2_naming_it(fake_bin, script, option):
  args = list(FULL_ARGS[script])
  i = args.index(option)
  del args[i : i + 2]
  proc = launch(fake_bin, script, "--dry-run", *args, check=False)
  assert proc.returncode == 2, proc.stdout
  assert proc.stdout == ""
  (line,) = proc.stderr.splitlines()
  assert line.startswith(f"{script}: error: missing required option {option}")


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_option_exits_2(fake_bin, script):
  proc = launch(
    fake_bin,
    script,
    "--dry-run",
    *FULL_ARGS[script],
    "--no-such-option",
    check=False,
  )
  assert proc.returncode == 2
  assert "unknown option --no-such-option" in proc.stderr


def test_printed_commands_survive_awkward_values(fake_bin):
  ((argv),) = dry(
    fake_bin,
    "tpu_create.sh",
    *SCOPE,
    "--accelerator-type",
    "v4-8",
    "--",
    "--labels=a=b c",
    '--description=it\'s "x" $HOME',
  )
  assert argv[-2:] == ["--labels=a=b c", '--description=it\'s "x" $HOME']
  argvs = dry(
    fake_bin,
    "gpu.sh",
    "--config",
    "configs/my config.py",
    "--workdir",
    "runs/a'b",
    "--",
    "--config.note=$(rm -rf /)",
  )
  assert argvs == [
    [
      "python",
      "-m",
      "superconv.main",
      "--config",
      "configs/my config.py",
      "--workdir",
      "runs/a'b",
      "--config.note=$(rm -rf /)",
    ]
  ]


LINTED = sorted(
  p.name for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch")
)


def test_every_script_is_linted():
  assert set(SCRIPTS) | {"common.sh", "slurm_example.sbatch"} == set(LINTED)


@pytest.mark.skipif(
  shutil.which("shellcheck") is None,
  reason="shellcheck not installed (apt-get install "
  "shellcheck; .ci/run installs it)",
)
def test_shellcheck():
  proc = subprocess.run(
    [
      "shellcheck",
      "--external-sources",
      "--severity=style",
      *(f"launch/{name}" for name in LINTED),
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr

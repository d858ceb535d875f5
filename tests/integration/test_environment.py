# SPDX-License-Identifier: Apache-2.0
"""What of the submitter's environment a job gets (--export, as sbatch), through a real hub and
agent, and kept across a hub restart."""
import re
import subprocess

SHOW = 'echo "venv=${SX_VENV-unset} extra=${SX_EXTRA-unset} ssh=${SSH_CONNECTION-unset} ' \
       'path=${PATH%%:*} tag=${SORTIE_JOB_ID}"'


def submit_from(sortie, env, *opts):
    """`sortie submit` run with the environment `env` (a user's shell after `source venv`)."""
    p = subprocess.run([sortie.bin, "submit", *opts, "--", "sh", "-c", SHOW], env=env,
                       capture_output=True, text=True, timeout=60, cwd=str(sortie.home))
    assert p.returncode == 0, p.stderr
    return int(p.stdout.strip())


def output(sortie, job):
    sortie.run("job", "wait", job)
    return sortie.run("job", "logs", job).stdout.strip()


def users_shell(sortie):
    return dict(sortie.env, SX_VENV="/home/u/venv", PATH="/home/u/venv/bin:" + sortie.env["PATH"],
                SSH_CONNECTION="10.9.9.9 50000 10.9.9.8 22")


def test_jobs_get_the_submitters_environment_unless_told_otherwise(sortie):
    sortie.start()  # the hub and its agents have the test's environment, not the user's shell
    sortie.add_pilot("--slots", "2")
    shell = users_shell(sortie)

    default = output(sortie, submit_from(sortie, shell))
    assert "venv=/home/u/venv" in default and "path=/home/u/venv/bin" in default, default
    assert "ssh=10.9.9.9" not in default, "a session variable was exported"
    assert re.search(r"tag=\d+$", default), default  # the job's own variables are there too

    none = output(sortie, submit_from(sortie, shell, "--export", "NONE"))
    assert "venv=unset" in none and "path=/home/u/venv/bin" not in none, none

    listed = output(sortie, submit_from(sortie, shell, "--export", "SX_VENV,SX_EXTRA=1,SX_NOT_SET"))
    assert "venv=/home/u/venv extra=1" in listed and "path=/home/u/venv/bin" not in listed, listed

    # The job's own --env wins over what was exported.
    both = output(sortie, submit_from(sortie, shell, "--export", "ALL,SX_EXTRA=2",
                                      "--env", "SX_EXTRA=3"))
    assert "venv=/home/u/venv extra=3" in both, both


def test_the_exported_environment_survives_a_hub_restart(sortie):
    sortie.start()
    job = submit_from(sortie, users_shell(sortie))  # no pilot yet: it waits in the store
    sortie.run("hub", "stop")
    sortie.start()
    sortie.add_pilot("--slots", "1")
    assert "venv=/home/u/venv" in output(sortie, job)


def test_a_bad_export_is_refused_before_anything_is_submitted(sortie):
    sortie.start()
    for bad in ["", "NONE,SX_VENV", "=x", "ALL,,"]:
        p = sortie.run("submit", "--export", bad, "--", "true", check=False)
        assert p.returncode == 2, (bad, p.stderr)
        assert "--export" in p.stderr and "NAME[=VALUE]" in p.stderr, p.stderr
    assert sortie.jobs() == []

# SPDX-License-Identifier: Apache-2.0
"""What a new user hit: each rough edge, kept as a test."""


def test_a_mistyped_option_gets_a_suggestion(sortie):
    r = sortie.run("submit", "--lable", "cpu", "--", "true", check=False)
    assert r.returncode == 2 and "did you mean --label?" in r.stderr, r.stderr


def test_an_empty_profile_name_is_an_error(sortie):
    r = sortie.run("--profile", "", "hub", "status", check=False)
    assert r.returncode == 2 and "empty profile name" in r.stderr, r.stderr


def test_a_configured_pilot_on_an_unknown_resource_fails_the_start(sortie):
    (sortie.profile / "config.toml").write_text(
        '[hub]\nheartbeat_interval = "500ms"\n[[pilots]]\nresource = "nope"\nslots_per_node = 1\n')
    r = sortie.run("hub", "start", check=False)
    assert r.returncode == 1
    assert "names resource 'nope', which is not defined" in r.stderr, r.stderr


def test_pilot_wait_all_fails_when_a_pilot_failed(sortie):
    sortie.start()
    sortie.run("resource", "add", "nowhere", "--type", "ssh", "--location", "root@127.0.0.1:1")
    pid = int(sortie.run("pilot", "add", "--resource", "nowhere").stdout)
    r = sortie.run("pilot", "wait", "--all", "--timeout", "60s", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"pilot {pid} failed" in r.stderr, r.stderr


def test_one_job_is_one_job(sortie):
    sortie.start()
    sortie.add_pilot("--resource", "local", "--slots", "1")
    job = sortie.submit("true")
    r = sortie.run("job", "wait", job)
    assert r.stdout.strip() == "1 job succeeded", r.stdout


def test_names_with_control_characters_are_shown_escaped(sortie):
    sortie.start()
    job = sortie.submit("true", opts=("--name", "evil\x1b]0;pwned\x07"))
    table = sortie.run("job", "list").stdout
    shown = sortie.run("job", "show", job).stdout
    for text in (table, shown):
        assert "\x1b" not in text and "\x07" not in text
        assert "evil\\x1b]0;pwned\\x07" in text, text
    sortie.run("job", "cancel", job)


def test_each_line_items_are_trimmed_and_map_jobs_are_named_after_them(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--resource", "local", "--slots", "2")
    items = tmp_path / "items"
    items.write_text("  alpha  \n\tbeta\r\n\n")
    group = sortie.run("map", "--each-line", items, "--", "echo").stdout.strip()
    sortie.run("job", "wait", "--group", group)
    jobs = sortie.jobs("--group", group)
    assert sorted(j["name"] for j in jobs) == ["alpha", "beta"]
    # Without {} the item is appended, as GNU parallel does.
    assert sorted(sortie.run("job", "logs", j["id"]).stdout for j in jobs) == ["alpha\n", "beta\n"]


def test_a_group_that_does_not_exist_is_an_error_for_every_command(sortie):
    sortie.start()
    sortie.submit("true", opts=("--group", "sims"))
    for cmd in (["job", "list"], ["job", "wait"], ["job", "cancel"], ["job", "list"]):
        r = sortie.run(*cmd, "--group", "simz", check=False)
        assert r.returncode == 1 and "no group is named 'simz'" in r.stderr, (cmd, r.stderr)
        r = sortie.run(*cmd, "--group", "999", check=False)
        assert r.returncode == 1 and "group 999 does not exist" in r.stderr, (cmd, r.stderr)
    sortie.run("job", "cancel", "--group", "sims")


def test_a_submission_with_no_pilot_says_it_will_wait(sortie):
    sortie.start()
    r = sortie.run("submit", "--", "true")
    assert "no pilot is running" in r.stderr, r.stderr
    job = int(r.stdout)
    # And its logs say why there is nothing to show.
    r = sortie.run("job", "logs", job, check=False)
    assert r.returncode == 1 and "has not started yet (queued)" in r.stderr, r.stderr
    sortie.add_pilot("--resource", "local", "--slots", "1")
    r = sortie.run("submit", "--", "true")
    assert "no pilot" not in r.stderr
    sortie.run("job", "wait", "--all")


def test_a_readable_hub_json_stops_the_start_instead_of_making_a_new_token(sortie):
    sortie.start()
    sortie.run("hub", "stop")
    hub_json = sortie.profile / "hub.json"
    hub_json.chmod(0o644)
    r = sortie.run("hub", "start", check=False)
    assert r.returncode == 1 and "readable by other users" in r.stderr, r.stderr
    hub_json.chmod(0o600)
    sortie.start()


def test_jobs_that_cannot_run_say_why(sortie):
    sortie.start()
    job = sortie.submit("true")
    assert "no pilot is running" in sortie.job(job)["reason"]
    sortie.add_pilot("--resource", "local", "--slots", "2", "--label", "cpu",
                     "--memory-per-node", "1G", "--time", "10m")
    cases = {
        ("--label", "NOPE"): "no running pilot has label 'NOPE'",
        ("--slots", "4"): "it needs 4 slots on one node; the largest node it may use has 2",
        ("--host", "elsewhere"): "it must run on elsewhere, which no running pilot has",
        ("--memory", "2G"): "it needs 2.0 GiB of memory",
        ("--time-request", "1h"): "it asks for 1h",
    }
    for opts, words in cases.items():
        j = sortie.submit("true", opts=opts)
        shown = sortie.job(j)
        assert shown["state"] == "queued" and words in shown["reason"], (opts, shown["reason"])
        listed = [x for x in sortie.jobs() if x["id"] == j][0]
        assert words in listed["reason"], listed
    sortie.run("job", "cancel", "--all")


def test_job_logs_of_several_jobs_prefixes_lines_and_follow_exits_with_the_outcome(sortie):
    sortie.start()
    sortie.add_pilot("--resource", "local", "--slots", "2")
    group = sortie.run("map", "--array", "1-3", "--group", "three", "--",
                       "sh", "-c", 'echo "a$1"; echo "b$1"; exit $(( $1 == 3 ))', "x").stdout.strip()
    r = sortie.run("job", "logs", "-f", "--group", "three", check=False)
    assert r.returncode == 1, r  # job 3 failed
    lines = r.stdout.splitlines()
    jobs = sorted(j["id"] for j in sortie.jobs("--group", group))
    expected = [f"[{jid}] {w}{k}" for k, jid in enumerate(jobs, 1) for w in "ab"]
    assert lines == expected, lines
    r = sortie.run("job", "logs", "-f", jobs[0])
    assert r.stdout == "a1\nb1\n"
    r = sortie.run("job", "logs", f"{jobs[0]}-{jobs[1]}")
    assert r.stdout.splitlines() == expected[:4]


def test_verbose_says_which_hub_a_command_talks_to(sortie):
    sortie.start()
    r = sortie.run("-v", "job", "list")
    assert f"hub pid {sortie.hub_pid()}" in r.stderr and "connected" in r.stderr, r.stderr
    assert sortie.hub_file()["token"] not in r.stderr

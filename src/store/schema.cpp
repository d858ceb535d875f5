// SPDX-License-Identifier: Apache-2.0
// The store's schema and its migrations, one step per version.
#include "store/schema.hpp"

namespace sortie::store {

const std::vector<const char*>& migrations() {
  static const std::vector<const char*> steps = {
      // 0 -> 1: jobs, their shared specs and groups, agents and pilots.
      R"sql(
CREATE TABLE specs (
  id INTEGER PRIMARY KEY,
  body BLOB NOT NULL                 -- serialized sortie.pb.JobSpec
);
CREATE TABLE groups (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL DEFAULT '',
  created_ms INTEGER NOT NULL,
  first_job INTEGER NOT NULL,
  count INTEGER NOT NULL
);
CREATE TABLE jobs (
  id INTEGER PRIMARY KEY,
  spec_id INTEGER NOT NULL,
  group_id INTEGER NOT NULL,
  array_index INTEGER,               -- NULL unless part of an array
  state INTEGER NOT NULL,            -- sortie.pb.JobState
  attempt INTEGER NOT NULL DEFAULT 0,
  agent_id INTEGER NOT NULL DEFAULT 0,
  exit_code INTEGER,
  signal INTEGER,
  submit_ms INTEGER NOT NULL,
  start_ms INTEGER NOT NULL DEFAULT 0,
  end_ms INTEGER NOT NULL DEFAULT 0,
  history BLOB,                      -- transitions after 'queued': 9 bytes each (state, ms)
  user_cpu_us INTEGER NOT NULL DEFAULT 0,
  system_cpu_us INTEGER NOT NULL DEFAULT 0,
  max_rss_kib INTEGER NOT NULL DEFAULT 0,
  reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE agents (
  id INTEGER PRIMARY KEY,
  pilot_id INTEGER NOT NULL,
  node TEXT NOT NULL,
  hostname TEXT NOT NULL,
  pid INTEGER NOT NULL,
  slots INTEGER NOT NULL,
  label TEXT NOT NULL,
  connected INTEGER NOT NULL,
  registered_ms INTEGER NOT NULL
);
CREATE TABLE pilots (
  id INTEGER PRIMARY KEY,
  spec BLOB NOT NULL,                -- serialized sortie.pb.PilotSpec
  state TEXT NOT NULL,
  created_ms INTEGER NOT NULL,
  ended_ms INTEGER NOT NULL DEFAULT 0,
  reason TEXT NOT NULL DEFAULT ''
);
)sql",
      // 1 -> 2: how each job's memory was enforced, and the GPUs it was given.
      R"sql(
ALTER TABLE jobs ADD COLUMN limits TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN gpus TEXT NOT NULL DEFAULT '';
)sql",
      // 2 -> 3: resources (where pilots run), and each pilot's batch job id.
      R"sql(
CREATE TABLE resources (
  name TEXT PRIMARY KEY,
  spec BLOB NOT NULL                 -- serialized sortie.pb.ResourceSpec
);
ALTER TABLE pilots ADD COLUMN batch_id TEXT NOT NULL DEFAULT '';
)sql",
      // 3 -> 4: each agent's session key and epoch (a reconnect must prove the key).
      R"sql(
ALTER TABLE agents ADD COLUMN session_key BLOB NOT NULL DEFAULT x'';
ALTER TABLE agents ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
)sql",
      // 4 -> 5: each submission's exported environment (a serialized EnvList), and the next ids,
      // which forgotten rows (job_retention) can no longer tell.
      R"sql(
ALTER TABLE groups ADD COLUMN env BLOB NOT NULL DEFAULT x'';
CREATE TABLE counters (
  name TEXT PRIMARY KEY,             -- 'job', 'spec', 'group': the lowest id never used
  next INTEGER NOT NULL
);
)sql",
      // 5 -> 6: function tasks and the engines that ran them (docs/engines.md). A task's payload
      // is dropped once it ended; its result stays until forgotten.
      R"sql(
CREATE TABLE tasks (
  id INTEGER PRIMARY KEY,
  state INTEGER NOT NULL,            -- 0 queued, 1 running, 2 done, 3 failed, 4 lost, 5 arriving
  handler TEXT NOT NULL DEFAULT '',
  label TEXT NOT NULL DEFAULT '',
  payload BLOB,                      -- NULL once ended
  target_engine INTEGER NOT NULL DEFAULT 0,
  engine_id INTEGER NOT NULL DEFAULT 0,
  retries INTEGER NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0,
  timeout_ms INTEGER NOT NULL DEFAULT 0,
  priority INTEGER NOT NULL DEFAULT 0,
  submit_ms INTEGER NOT NULL,
  start_ms INTEGER NOT NULL DEFAULT 0,
  end_ms INTEGER NOT NULL DEFAULT 0,
  result BLOB,
  error_type TEXT NOT NULL DEFAULT '',
  error_message TEXT NOT NULL DEFAULT '',
  traceback TEXT NOT NULL DEFAULT '',
  output BLOB,
  payload_size INTEGER NOT NULL DEFAULT 0,  -- a large argument: in output/tasks/ID.arg
  result_size INTEGER NOT NULL DEFAULT 0    -- a large result: in output/tasks/ID.res
);
CREATE TABLE engines (
  id INTEGER PRIMARY KEY,
  job_id INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  rank INTEGER NOT NULL,
  size INTEGER NOT NULL
);
)sql",
      // 6 -> 7: ended tasks by when they ended. The hub keeps only tasks that have not ended in
      // memory, and task_retention forgets from the oldest ended task on.
      R"sql(
CREATE INDEX tasks_by_end ON tasks(end_ms) WHERE end_ms > 0;
)sql",
  };
  return steps;
}

} // namespace sortie::store

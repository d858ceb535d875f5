// SPDX-License-Identifier: Apache-2.0
// jemalloc's settings for the sortie binary (read by jemalloc at its first allocation). Freed
// pages go back to the system within a second (jemalloc's default keeps them ten), so the hub's
// and the agent's resident memory follows what they hold, as with glibc's malloc; no background
// thread, so an agent has no thread of its own it did not start.
extern "C" {
// NOLINTNEXTLINE: the name jemalloc looks for
const char* malloc_conf = "dirty_decay_ms:1000,muzzy_decay_ms:0,background_thread:false";
}

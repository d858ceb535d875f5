// SPDX-License-Identifier: Apache-2.0
// The store's schema as a list of migrations: migrations()[k] takes the schema from version k to
// k + 1 (PRAGMA user_version). Never edit a released step; append a new one and raise
// kSchemaVersion, and add a test that opens a store of every earlier version.
#pragma once

#include <vector>

namespace sortie::store {

const std::vector<const char*>& migrations();

} // namespace sortie::store

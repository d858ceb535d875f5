// SPDX-License-Identifier: Apache-2.0
// How the CLI prints things: human tables and JSON (one JSON document per command).
#pragma once

#include <string>
#include <vector>

#include "sortie/client.hpp"

namespace sortie::cli {

/// Left-aligned columns sized to their widest cell (the first row is the header).
std::string table(const std::vector<std::vector<std::string>>& rows);
std::string jobs_table(const std::vector<JobInfo>& jobs);
std::string jobs_json(const std::vector<JobInfo>& jobs);
std::string job_details(const JobInfo& job);
std::string job_json(const JobInfo& job);
std::string status_text(const HubStatus& s);
std::string status_json(const HubStatus& s);
std::string pilots_table(const std::vector<PilotInfo>& pilots);
std::string pilots_json(const std::vector<PilotInfo>& pilots);
/// `pilot show`: every field, each reason on its own line, the nodes that are up.
std::string pilot_detail(const PilotInfo& pilot);
/// The first line of `text`, printable, at most `width` characters (marked when cut).
std::string one_line(const std::string& text, std::size_t width);
std::string resources_table(const std::vector<ResourceSpec>& resources);
std::string resources_json(const std::vector<ResourceSpec>& resources);
std::string submitted_json(const Submitted& s);
/// "[#######.....]  512/1000  3 failed" for a terminal of `width` columns.
std::string progress_line(const WaitProgress& p, int width);

} // namespace sortie::cli

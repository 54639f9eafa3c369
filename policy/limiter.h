#pragma once

namespace sluice::policy {}  // namespace sluice::policy

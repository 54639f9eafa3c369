#include "policy/basic_auth_cache.h"

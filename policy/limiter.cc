#include "policy/limiter.h"

#include "policy/ip_set.h"

#include "policy/keys.h"

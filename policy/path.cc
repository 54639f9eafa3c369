#include "policy/path.h"

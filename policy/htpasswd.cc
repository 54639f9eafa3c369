#include "policy/htpasswd.h"

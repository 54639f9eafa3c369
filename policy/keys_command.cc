#include "policy/keys_command.h"

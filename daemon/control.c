/*
 * control.c: placeholder while the operations issue is being built; its
 * functions are declared in phoneclaimd.h.
 */
#include "config.h"

#include "phoneclaimd.h"

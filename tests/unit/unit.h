/*
 * Helpers shared by the unit tests: temporary directories and files.
 */
#ifndef UNIT_H
#define UNIT_H

#include <stddef.h>

char	*unit_tmpdir(void);
void	 unit_rmtree(const char *);
char	*unit_write(const char *, const char *, const char *, int);

#endif

/*
 * A main() for the fuzz targets without libFuzzer: feed each file named on
 * the command line (or each file in a named directory, in name order) to
 * LLVMFuzzerTestOneInput, once.  make check replays the seed corpora and
 * the regression inputs this way with the ordinary compiler, and under
 * --enable-asan with the sanitizers.
 */
#include "config.h"

#include <sys/stat.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xmalloc.h"

#include "fuzz.h"

static int	driver_file(const char *);
static int	driver_dir(const char *);
static int	driver_skip(const struct dirent *);

static size_t	driver_count;

/*
 * Run one file: read it into a buffer of exactly its size, so that the
 * sanitizers see a read past its end.
 */
static int
driver_file(const char *path)
{
	struct stat	 sb;
	uint8_t		*buf;
	size_t		 len = 0;
	ssize_t		 n;
	int		 fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1 ||
	    fstat(fd, &sb) == -1) {
		fprintf(stderr, "driver: %s: %s\n", path, strerror(errno));
		return (-1);
	}
	buf = xmalloc(sb.st_size > 0 ? (size_t)sb.st_size : 1);
	while (len < (size_t)sb.st_size &&
	    (n = read(fd, buf + len, (size_t)sb.st_size - len)) > 0)
		len += (size_t)n;
	close(fd);
	if (len != (size_t)sb.st_size) {
		fprintf(stderr, "driver: %s: short read\n", path);
		free(buf);
		return (-1);
	}
	printf("%s: %zu bytes\n", path, len);
	fflush(stdout);
	LLVMFuzzerTestOneInput(buf, len);
	free(buf);
	driver_count++;
	return (0);
}

/* Leave out ".", "..", and hidden files such as ".gitkeep". */
static int
driver_skip(const struct dirent *d)
{
	return (d->d_name[0] != '.');
}

/* Run every file of a directory, in name order. */
static int
driver_dir(const char *dir)
{
	struct dirent	**names;
	char		 *path;
	int		  i, n, rv = 0;

	if ((n = scandir(dir, &names, driver_skip, alphasort)) == -1) {
		fprintf(stderr, "driver: %s: %s\n", dir, strerror(errno));
		return (-1);
	}
	for (i = 0; i < n; i++) {
		xasprintf(&path, "%s/%s", dir, names[i]->d_name);
		if (driver_file(path) != 0)
			rv = -1;
		free(path);
		free(names[i]);
	}
	free(names);
	return (rv);
}

/* Run each argument; fail when one cannot be read or none was found. */
int
main(int argc, char **argv)
{
	struct stat	sb;
	int		i, rv = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: %s file-or-directory ...\n", argv[0]);
		return (2);
	}
	for (i = 1; i < argc; i++) {
		if (stat(argv[i], &sb) == 0 && S_ISDIR(sb.st_mode)) {
			if (driver_dir(argv[i]) != 0)
				rv = 1;
		} else if (driver_file(argv[i]) != 0)
			rv = 1;
	}
	printf("%zu inputs run\n", driver_count);
	if (driver_count == 0) {
		fprintf(stderr, "driver: no input found\n");
		rv = 1;
	}
	return (rv);
}

/*
 * Filter for the phone oracle test: normalise each line of stdin and print
 * its E.164 form or "invalid", one line per input line.
 *
 * usage: phone_normalise [region] < numbers
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>

#include "phone.h"

static void	usage(void);

/* Print usage and exit. */
static void
usage(void)
{
	fprintf(stderr, "usage: phone_normalise [region] < numbers\n");
	exit(2);
}

/* Read numbers from stdin and write the normalised forms to stdout. */
int
main(int argc, char **argv)
{
	const char	*region = NULL;
	char		*line = NULL;
	char		 out[PHONE_E164_SIZE];
	size_t		 size = 0;
	ssize_t		 n;

	if (argc > 2)
		usage();
	if (argc == 2)
		region = argv[1];

	while ((n = getline(&line, &size, stdin)) != -1) {
		if (n > 0 && line[n - 1] == '\n')
			n--;
		if (phone_normalise(line, (size_t)n, region, out) == 0)
			printf("%s\n", out);
		else
			printf("invalid\n");
	}
	free(line);

	if (ferror(stdin)) {
		perror("phone_normalise: stdin");
		return (1);
	}
	if (fflush(stdout) != 0 || ferror(stdout)) {
		perror("phone_normalise: stdout");
		return (1);
	}
	return (0);
}

/*
 * Shared by the fuzz targets (tests/fuzz/fuzz_*.c): each defines
 * LLVMFuzzerTestOneInput, linked either with libFuzzer (clang, run-fuzz)
 * or with driver.c (the ordinary compiler, make check).
 */
#ifndef FUZZ_H
#define FUZZ_H

#include <stddef.h>
#include <stdint.h>

/* A failed property: print it and abort, which both drivers report. */
#define FUZZ_CHECK(e) do {						\
	if (!(e))							\
		fuzz_fail(__FILE__, __LINE__, #e);			\
} while (0)

int		 LLVMFuzzerTestOneInput(const uint8_t *, size_t);
void		 fuzz_fail(const char *, int, const char *)
		     __attribute__((noreturn));
const char	*fuzz_dir(void);
void		 fuzz_store(void);
void		 fuzz_store_reset(int64_t);

#endif

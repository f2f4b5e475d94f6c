/* What fresh stub memory holds (CMM of libax_sys, device memory of libaxcl_rt), one rule for
 * both: the named environment variable is garbage (default: pseudo-random bytes), nan (0xFF
 * bytes: NaN in bf16 and float32), 5a (0x5A bytes: bf16 ~1.5e16) or zero. Real CMM and
 * axclrtMalloc memory are never zeroed. */
#ifndef STUB_FILL_H
#define STUB_FILL_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline void stub_fill(unsigned char *p, uint64_t size, const char *mode, uint64_t *seed)
{
    if (mode && strcmp(mode, "zero") == 0) {
        memset(p, 0, size);
    } else if (mode && strcmp(mode, "nan") == 0) {
        memset(p, 0xFF, size);
    } else if (mode && strcmp(mode, "5a") == 0) {
        memset(p, 0x5A, size);
    } else {  /* garbage: xorshift64 bytes, a fresh stream per block */
        for (uint64_t i = 0; i < size; i += 8) {
            *seed ^= *seed << 13; *seed ^= *seed >> 7; *seed ^= *seed << 17;
            memcpy(p + i, seed, size - i < 8 ? size - i : 8);
        }
    }
}
#endif

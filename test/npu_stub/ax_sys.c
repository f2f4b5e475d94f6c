/* libax_sys.so stand-in: CMM memory with a CPU side and a device side (see README.md).
 *
 * Exports what pyaxengine's cdef declares for ax_sys_api.h (axengine/_axe_capi.py):
 * AX_SYS_Init, AX_SYS_Deinit, AX_SYS_MemAllocCached, AX_SYS_MemFree, AX_SYS_MflushCache,
 * AX_SYS_MinvalidateCache; plus the stub-only AX_STUB_* calls of ax_stub.h.
 *
 * Environment (read at each allocation / call):
 *   AX_STUB_CMM_FILL    what fresh CMM holds, both sides: garbage (default: pseudo-random
 *                       bytes), nan (0xFF bytes: NaN in bf16 and float32), 5a (0x5A bytes:
 *                       bf16 ~1.5e16), zero
 *   AX_STUB_CMM_STRICT  1: flush / invalidate only ranges that start at a block start
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ax_stub.h"
#include "stub_fill.h"

#define MAX_BLOCKS 65536

typedef struct {
    AX_U64 phy;
    AX_U64 size;
    unsigned char *vir;  /* the CPU side: what pVirAddr points at */
    unsigned char *dev;  /* the device side: what the NPU reads and writes */
} block_t;

static block_t blocks[MAX_BLOCKS];
static int n_blocks;
static AX_U64 next_phy = 0x100000000ULL;
static AX_U64 stats[4];
static uint64_t seed = 0x9E3779B97F4A7C15ULL;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static int env_is(const char *name, const char *value)
{
    const char *v = getenv(name);
    return v && strcmp(v, value) == 0;
}

static void fill(unsigned char *p, AX_U64 size)
{
    stub_fill(p, size, getenv("AX_STUB_CMM_FILL"), &seed);
}

/* The block holding [phy, phy + size), or NULL. Caller holds the lock. */
static block_t *find(AX_U64 phy, AX_U64 size)
{
    for (int i = 0; i < n_blocks; i++) {
        block_t *b = &blocks[i];
        if (phy >= b->phy && phy - b->phy + size <= b->size)
            return b;
    }
    return NULL;
}

AX_S32 AX_SYS_Init(AX_VOID) { return 0; }
AX_S32 AX_SYS_Deinit(AX_VOID) { return 0; }

AX_S32 AX_SYS_MemAllocCached(AX_U64 *phyaddr, AX_VOID **pviraddr, AX_U32 size, AX_U32 align,
                             const AX_S8 *token)
{
    (void)token;
    if (!phyaddr || !pviraddr || size == 0)
        return -1;
    if (align < 64)
        align = 64;
    pthread_mutex_lock(&lock);
    if (n_blocks == MAX_BLOCKS) {
        pthread_mutex_unlock(&lock);
        return -1;
    }
    block_t *b = &blocks[n_blocks];
    b->size = size;
    b->phy = (next_phy + align - 1) / align * align;
    next_phy = b->phy + size + 4096;  /* a gap: no range runs from one block into the next */
    b->vir = aligned_alloc(align, (size + align - 1) / align * align);
    b->dev = malloc(size);
    if (!b->vir || !b->dev) {
        free(b->vir);
        free(b->dev);
        pthread_mutex_unlock(&lock);
        return -1;
    }
    fill(b->vir, size);
    memcpy(b->dev, b->vir, size);  /* fresh memory: both sides agree, on garbage */
    n_blocks++;
    *phyaddr = b->phy;
    *pviraddr = b->vir;
    pthread_mutex_unlock(&lock);
    return 0;
}

AX_S32 AX_SYS_MemFree(AX_U64 phyaddr, AX_VOID *pviraddr)
{
    pthread_mutex_lock(&lock);
    for (int i = 0; i < n_blocks; i++) {
        if (blocks[i].phy == phyaddr && blocks[i].vir == pviraddr) {
            free(blocks[i].vir);
            free(blocks[i].dev);
            blocks[i] = blocks[--n_blocks];
            pthread_mutex_unlock(&lock);
            return 0;
        }
    }
    pthread_mutex_unlock(&lock);
    return -1;
}

/* flush: CPU -> device; invalidate: device -> CPU, over exactly [phy, phy + size). */
static AX_S32 sync_range(AX_U64 phy, AX_VOID *vir, AX_U32 size, int to_device)
{
    pthread_mutex_lock(&lock);
    block_t *b = find(phy, size);
    AX_U64 off = b ? phy - b->phy : 0;
    AX_S32 ret = 0;
    if (!b) {
        fprintf(stderr, "ax_sys stub: 0x%llx+%u is not inside one CMM block\n", phy, size);
        ret = -1;
    } else if ((unsigned char *)vir != b->vir + off) {
        fprintf(stderr, "ax_sys stub: phy 0x%llx and vir %p name different offsets\n", phy, vir);
        ret = -1;
    } else if (off != 0 && env_is("AX_STUB_CMM_STRICT", "1")) {
        ret = -1;  /* strict: only ranges starting at a block start */
    } else if (to_device) {
        memcpy(b->dev + off, b->vir + off, size);
        stats[0] += size;
        stats[1] += 1;
    } else {
        memcpy(b->vir + off, b->dev + off, size);
        stats[2] += size;
        stats[3] += 1;
    }
    pthread_mutex_unlock(&lock);
    return ret;
}

AX_S32 AX_SYS_MflushCache(AX_U64 phyaddr, AX_VOID *pviraddr, AX_U32 size)
{
    return sync_range(phyaddr, pviraddr, size, 1);
}

AX_S32 AX_SYS_MinvalidateCache(AX_U64 phyaddr, AX_VOID *pviraddr, AX_U32 size)
{
    return sync_range(phyaddr, pviraddr, size, 0);
}

void *AX_STUB_DevicePtr(AX_U64 phy, AX_U64 size)
{
    pthread_mutex_lock(&lock);
    block_t *b = find(phy, size);
    void *p = b ? b->dev + (phy - b->phy) : NULL;
    pthread_mutex_unlock(&lock);
    return p;
}

void AX_STUB_GetStats(AX_U64 out[4])
{
    pthread_mutex_lock(&lock);
    memcpy(out, stats, sizeof(stats));
    pthread_mutex_unlock(&lock);
}

void AX_STUB_ResetStats(void)
{
    pthread_mutex_lock(&lock);
    memset(stats, 0, sizeof(stats));
    pthread_mutex_unlock(&lock);
}

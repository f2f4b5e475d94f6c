/* libaxcl_rt.so stand-in: AXERA's AXCL runtime, i.e. an AX650N M.2 card seen from its host
 * (Raspberry Pi 5 + LLM-8850, ROCK 5B+ + AX-M1). See README.md, "The M.2 card".
 *
 * Exports every call pyaxengine's cdef declares (axengine/_axclrt_capi.py; the same cdef in
 * every release from 0.1.0rc1 to 0.1.3.rc3), plus the stub-only AXCL_STUB_* calls.
 *
 * What the card does here:
 * - Device memory is not host memory. axclrtMalloc returns an address inside a PROT_NONE
 *   reservation (the "device address space"); its bytes live in a separate host block only this
 *   library touches. A host read or write through a device pointer faults, and the SIGSEGV
 *   handler says so on stderr before the process dies.
 * - axclrtMemcpy copies exactly [ptr, ptr + count) and refuses a range that is not inside one
 *   live device block (or a host pointer where a device one is due, and the reverse). It counts
 *   bytes and calls per direction: host_to_device and device_to_host cross the PCIe link,
 *   device_to_device stays on the card.
 * - Fresh device memory holds what AX_STUB_AXCL_FILL says (else AX_STUB_CMM_FILL; default
 *   garbage): axclrtMalloc never zeroes.
 * - Calls that need a context (malloc, memcpy, load, execute) fail without a current one on
 *   the calling thread (axclrtSetDevice / axclrtSetCurrentContext set it, per thread).
 * - axclrtEngineExecute resolves every IO buffer of the group to its device block and hands
 *   the "NPU" (AXCL_STUB_SetNpu, the Python host of npu_host.py) those blocks: inputs are read
 *   from and outputs written to device memory. The model must run on the device whose context
 *   is current, with buffers of that device.
 * - AX_STUB_AXCL_DEVICES=N (default 1) cards, device ids 129, 130, ... (PCIe bus numbers, not
 *   indices, as on a real host).
 * - AX_STUB_LINK_STATS=FILE: the counters are written there as JSON at axclFinalize and at exit
 *   (counted since the last AXCL_STUB_ResetLinkStats).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ax_stub.h"
#include "stub_fill.h"

typedef int32_t axclError;

#define AXCL_MAX_DEVICE_COUNT 256
#define AXCLRT_ENGINE_MAX_DIM_CNT 32
typedef struct { uint32_t num; int32_t devices[AXCL_MAX_DEVICE_COUNT]; } axclrtDeviceList;
typedef struct { int32_t dimCount; int32_t dims[AXCLRT_ENGINE_MAX_DIM_CNT]; } axclrtEngineIODims;
enum { H2H = 0, H2D = 1, D2H = 2, D2D = 3 };

/* Error codes: nonzero, distinct, named on stderr when returned. */
#define E_PARAM ((axclError)0x80030001)
#define E_CONTEXT ((axclError)0x80030002)
#define E_RANGE ((axclError)0x80030003)
#define E_NOMEM ((axclError)0x80030004)
#define E_NPU ((axclError)0x80030005)
#define E_UNSUPPORTED ((axclError)0x80030006)

#define DEV_SPACE (1ULL << 38)  /* 256 GiB of address space reserved, none of it mapped */
#define MAX_DBLOCKS 65536
#define MAX_MODELS 4096
#define MAX_CTX 1024
#define MAX_IOS 4096
#define MAX_IO 64
#define MAX_DEVICES 8
#define FIRST_DEVICE_ID 129

typedef struct {
    uint64_t off, size;
    unsigned char *mem;  /* the card's DRAM, host-side model of it */
    int device;          /* index */
    int alive;
} dblock_t;

typedef struct { uint32_t magic; int device; int alive; } ctx_t;
typedef struct {
    int alive, device;
    AX_U64 npu_model;
    AX_U32 groups;
    uint64_t engine_ctx;
} model_t;
typedef struct {
    uint32_t magic;
    model_t *model;
    void *in[MAX_IO], *out[MAX_IO];
    uint64_t in_size[MAX_IO], out_size[MAX_IO];
    int alive;
} io_t;

#define CTX_MAGIC 0xC0C7A650u
#define IO_MAGIC 0x10A650A6u

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned char *dev_base;
static uint64_t dev_next;
static dblock_t dblocks[MAX_DBLOCKS];
static int n_dblocks;
static ctx_t contexts[MAX_CTX];
static int n_contexts;
static ctx_t *default_ctx[MAX_DEVICES];
static model_t models[MAX_MODELS];
static int n_models;
static io_t ios[MAX_IOS];
static int n_ios;
static uint64_t next_engine_ctx = 1;
static __thread ctx_t *current;
static uint64_t seed = 0xD1B54A32D192ED03ULL;
/* h2d bytes, calls; d2h bytes, calls; d2d bytes, calls; runs; runs per device index */
static uint64_t stats[7], runs_by_device[MAX_DEVICES];
static struct sigaction previous_segv;
static int stats_written;
static struct {
    AX_STUB_LOAD_FN load;
    AX_STUB_UNLOAD_FN unload;
    AX_STUB_COUNT_FN count;
    AX_STUB_INFO_FN info;
    AX_STUB_RUN_FN run;
} npu;

static axclError fail(axclError code, const char *what)
{
    fprintf(stderr, "axcl stub: %s (0x%08x)\n", what, (unsigned)code);
    return code;
}

static int n_devices(void)
{
    const char *v = getenv("AX_STUB_AXCL_DEVICES");
    int n = v ? atoi(v) : 1;
    return n < 1 ? 1 : (n > MAX_DEVICES ? MAX_DEVICES : n);
}

/* -- device pointers are not host memory ------------------------------------------------ */
static void put_hex(char *p, uint64_t v)
{
    for (int i = 15; i >= 0; i--, v >>= 4)
        p[i] = "0123456789abcdef"[v & 15];
}

static void on_segv(int sig, siginfo_t *info, void *uctx)
{
    unsigned char *a = (unsigned char *)info->si_addr;
    if (dev_base && a >= dev_base && a < dev_base + DEV_SPACE) {
        char msg[] = "axcl stub: the host touched device memory at 0x0000000000000000: a "
                     "device pointer is not host memory (use axclrtMemcpy)\n";
        put_hex(strstr(msg, "0x") + 2, (uint64_t)(uintptr_t)a);
        ssize_t ignored = write(2, msg, sizeof(msg) - 1);
        (void)ignored;
        signal(SIGSEGV, SIG_DFL);  /* returning re-runs the access: the default action kills */
        return;
    }
    if (previous_segv.sa_flags & SA_SIGINFO) {
        previous_segv.sa_sigaction(sig, info, uctx);
    } else if (previous_segv.sa_handler != SIG_DFL && previous_segv.sa_handler != SIG_IGN) {
        previous_segv.sa_handler(sig);
    } else {
        signal(SIGSEGV, SIG_DFL);
    }
}

static int reserve_device_space(void)  /* caller holds the lock */
{
    if (dev_base)
        return 0;
    void *p = mmap(NULL, DEV_SPACE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
                   0);
    if (p == MAP_FAILED)
        return -1;
    dev_base = p;
    dev_next = 4096;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, &previous_segv);
    return 0;
}

static int in_device_space(const void *p)
{
    return dev_base && (const unsigned char *)p >= dev_base &&
           (const unsigned char *)p < dev_base + DEV_SPACE;
}

/* The host bytes behind device range [p, p + size), or NULL unless it lies in one live
 * block. Caller holds the lock. */
static unsigned char *device_bytes(const void *p, uint64_t size, int *device)
{
    if (!in_device_space(p))
        return NULL;
    uint64_t off = (uint64_t)((const unsigned char *)p - dev_base);
    for (int i = 0; i < n_dblocks; i++) {
        dblock_t *b = &dblocks[i];
        if (b->alive && off >= b->off && off - b->off + size <= b->size) {
            if (device)
                *device = b->device;
            return b->mem + (off - b->off);
        }
    }
    return NULL;
}

/* -- stats -------------------------------------------------------------------------------- */
void AXCL_STUB_GetLinkStats(uint64_t out[7])
{
    pthread_mutex_lock(&lock);
    memcpy(out, stats, sizeof(stats));
    pthread_mutex_unlock(&lock);
}

void AXCL_STUB_ResetLinkStats(void)
{
    pthread_mutex_lock(&lock);
    memset(stats, 0, sizeof(stats));
    memset(runs_by_device, 0, sizeof(runs_by_device));
    pthread_mutex_unlock(&lock);
}

static void write_stats(void)
{
    const char *path = getenv("AX_STUB_LINK_STATS");
    if (!path || !*path)
        return;
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "axcl stub: cannot write %s\n", path);
        return;
    }
    pthread_mutex_lock(&lock);
    fprintf(f, "{\"host_to_device\": {\"bytes\": %llu, \"calls\": %llu}, "
               "\"device_to_host\": {\"bytes\": %llu, \"calls\": %llu}, "
               "\"device_to_device\": {\"bytes\": %llu, \"calls\": %llu}, \"runs\": %llu, "
               "\"runs_by_device\": {",
            (unsigned long long)stats[0], (unsigned long long)stats[1],
            (unsigned long long)stats[2], (unsigned long long)stats[3],
            (unsigned long long)stats[4], (unsigned long long)stats[5],
            (unsigned long long)stats[6]);
    for (int d = 0, first = 1; d < MAX_DEVICES; d++) {
        if (runs_by_device[d]) {
            fprintf(f, "%s\"%d\": %llu", first ? "" : ", ", d,
                    (unsigned long long)runs_by_device[d]);
            first = 0;
        }
    }
    fprintf(f, "}}\n");
    pthread_mutex_unlock(&lock);
    fclose(f);
    stats_written = 1;
}

__attribute__((destructor)) static void at_exit_stats(void)
{
    if (!stats_written)
        write_stats();
}

void AXCL_STUB_SetNpu(AX_STUB_LOAD_FN load, AX_STUB_UNLOAD_FN unload, AX_STUB_COUNT_FN count,
                      AX_STUB_INFO_FN info, AX_STUB_RUN_FN run)
{
    npu.load = load;
    npu.unload = unload;
    npu.count = count;
    npu.info = info;
    npu.run = run;
}

/* -- axcl.h, axcl_rt.h, devices and contexts ---------------------------------------------- */
axclError axclInit(const char *config)
{
    (void)config;
    pthread_mutex_lock(&lock);
    int ret = reserve_device_space();
    pthread_mutex_unlock(&lock);
    return ret ? fail(E_NOMEM, "cannot reserve the device address space") : 0;
}

axclError axclFinalize(void)
{
    write_stats();
    return 0;
}

axclError axclrtGetVersion(int32_t *major, int32_t *minor, int32_t *patch)
{
    if (!major || !minor || !patch)
        return E_PARAM;
    *major = 3;
    *minor = 4;
    *patch = 0;
    return 0;
}

const char *axclrtGetSocName(void) { return "AX650N"; }

axclError axclrtGetDeviceList(axclrtDeviceList *list)
{
    if (!list)
        return E_PARAM;
    memset(list, 0, sizeof(*list));
    list->num = (uint32_t)n_devices();
    for (uint32_t i = 0; i < list->num; i++)
        list->devices[i] = FIRST_DEVICE_ID + (int32_t)i;
    return 0;
}

static int device_index(int32_t id)
{
    int i = id - FIRST_DEVICE_ID;
    return i >= 0 && i < n_devices() ? i : -1;
}

static ctx_t *new_context(int device)  /* caller holds the lock */
{
    if (n_contexts == MAX_CTX)
        return NULL;
    ctx_t *c = &contexts[n_contexts++];
    c->magic = CTX_MAGIC;
    c->device = device;
    c->alive = 1;
    return c;
}

static ctx_t *live_context(void *p)
{
    ctx_t *c = (ctx_t *)p;
    if (c < contexts || c >= contexts + n_contexts || c->magic != CTX_MAGIC || !c->alive)
        return NULL;
    return c;
}

axclError axclrtSetDevice(int32_t id)
{
    int d = device_index(id);
    if (d < 0)
        return fail(E_PARAM, "axclrtSetDevice: no such device id");
    pthread_mutex_lock(&lock);
    if (!default_ctx[d])
        default_ctx[d] = new_context(d);
    current = default_ctx[d];
    pthread_mutex_unlock(&lock);
    return current ? 0 : E_NOMEM;
}

axclError axclrtResetDevice(int32_t id) { return device_index(id) < 0 ? E_PARAM : 0; }

axclError axclrtCreateContext(void **context, int32_t id)
{
    int d = device_index(id);
    if (!context || d < 0)
        return fail(E_PARAM, "axclrtCreateContext: bad argument or device id");
    pthread_mutex_lock(&lock);
    ctx_t *c = new_context(d);
    pthread_mutex_unlock(&lock);
    if (!c)
        return E_NOMEM;
    current = c;  /* as AXCL: a new context is bound to the calling thread */
    *context = c;
    return 0;
}

axclError axclrtDestroyContext(void *context)
{
    ctx_t *c = live_context(context);
    if (!c)
        return E_PARAM;
    c->alive = 0;
    if (current == c)
        current = NULL;
    return 0;
}

axclError axclrtSetCurrentContext(void *context)
{
    ctx_t *c = live_context(context);
    if (!c)
        return fail(E_CONTEXT, "axclrtSetCurrentContext: not a live context");
    current = c;
    return 0;
}

axclError axclrtGetCurrentContext(void **context)
{
    if (!context)
        return E_PARAM;
    if (!current || !current->alive)
        return fail(E_CONTEXT, "axclrtGetCurrentContext: no context on this thread");
    *context = current;
    return 0;
}

axclError axclrtGetDefaultContext(void **context, int32_t id)
{
    int d = device_index(id);
    if (!context || d < 0 || !default_ctx[d])
        return E_PARAM;
    *context = default_ctx[d];
    return 0;
}

static int need_context(const char *call)
{
    if (current && current->alive)
        return 0;
    fprintf(stderr, "axcl stub: %s without a current context on this thread\n", call);
    return -1;
}

/* -- axcl_rt_memory.h ---------------------------------------------------------------------- */
axclError axclrtMalloc(void **devPtr, size_t size, int policy)
{
    (void)policy;
    if (!devPtr || size == 0)
        return E_PARAM;
    if (need_context("axclrtMalloc"))
        return E_CONTEXT;
    const char *mode = getenv("AX_STUB_AXCL_FILL");
    if (!mode)
        mode = getenv("AX_STUB_CMM_FILL");
    pthread_mutex_lock(&lock);
    if (reserve_device_space() || n_dblocks == MAX_DBLOCKS ||
        dev_next + size + 4096 > DEV_SPACE) {
        pthread_mutex_unlock(&lock);
        return fail(E_NOMEM, "axclrtMalloc: out of device memory");
    }
    dblock_t *b = &dblocks[n_dblocks];
    b->mem = malloc(size);
    if (!b->mem) {
        pthread_mutex_unlock(&lock);
        return fail(E_NOMEM, "axclrtMalloc: out of memory");
    }
    b->off = dev_next;
    b->size = size;
    b->device = current->device;
    b->alive = 1;
    dev_next = (b->off + size + 4096 + 255) / 256 * 256;  /* a gap between blocks */
    stub_fill(b->mem, size, mode, &seed);
    n_dblocks++;
    *devPtr = dev_base + b->off;
    pthread_mutex_unlock(&lock);
    return 0;
}

axclError axclrtMallocCached(void **devPtr, size_t size, int policy)
{
    return axclrtMalloc(devPtr, size, policy);
}

axclError axclrtFree(void *devPtr)
{
    pthread_mutex_lock(&lock);
    uint64_t off = in_device_space(devPtr) ? (uint64_t)((unsigned char *)devPtr - dev_base) : 0;
    for (int i = 0; i < n_dblocks; i++) {
        if (dblocks[i].alive && dblocks[i].off == off) {
            dblocks[i].alive = 0;
            free(dblocks[i].mem);
            dblocks[i].mem = NULL;
            pthread_mutex_unlock(&lock);
            return 0;
        }
    }
    pthread_mutex_unlock(&lock);
    return fail(E_PARAM, "axclrtFree: not the start of a live device block");
}

axclError axclrtMemFlush(void *devPtr, size_t size)
{
    pthread_mutex_lock(&lock);
    unsigned char *p = device_bytes(devPtr, size, NULL);
    pthread_mutex_unlock(&lock);
    return p ? 0 : fail(E_RANGE, "axclrtMemFlush: not a device range");
}

axclError axclrtMemcpy(void *dst, const void *src, size_t count, int kind)
{
    if (need_context("axclrtMemcpy"))
        return E_CONTEXT;
    if (!dst || !src)
        return fail(E_PARAM, "axclrtMemcpy: NULL pointer");
    if (kind == H2H) {
        if (in_device_space(dst) || in_device_space(src))
            return fail(E_RANGE, "axclrtMemcpy host-to-host given a device pointer");
        memmove(dst, src, count);
        return 0;
    }
    if (kind != H2D && kind != D2H && kind != D2D)
        return fail(E_UNSUPPORTED, "axclrtMemcpy: host physical copies are not modelled");
    pthread_mutex_lock(&lock);
    unsigned char *to = kind == D2H ? (unsigned char *)dst : device_bytes(dst, count, NULL);
    const unsigned char *from = kind == H2D ? (const unsigned char *)src
                                            : device_bytes(src, count, NULL);
    int host_side_is_device = (kind == H2D && in_device_space(src)) ||
                              (kind == D2H && in_device_space(dst));
    if (!to || !from || host_side_is_device) {
        pthread_mutex_unlock(&lock);
        fprintf(stderr, "axcl stub: axclrtMemcpy(%p <- %p, %zu, kind %d): %s\n", dst, src, count,
                kind, host_side_is_device ? "a device pointer where a host one is due"
                                          : "the device range is not inside one live block");
        return E_RANGE;
    }
    memmove(to, from, count);
    int at = kind == H2D ? 0 : (kind == D2H ? 2 : 4);
    stats[at] += count;
    stats[at + 1] += 1;
    pthread_mutex_unlock(&lock);
    return 0;
}

/* -- axcl_rt_engine.h ---------------------------------------------------------------------- */
axclError axclrtEngineInit(int kind) { (void)kind; return 0; }  /* idempotent per process */
axclError axclrtEngineFinalize(void) { return 0; }

axclError axclrtEngineGetVNpuKind(int *kind)
{
    if (!kind)
        return E_PARAM;
    *kind = 0;  /* AXCL_VNPU_DISABLE */
    return 0;
}

static model_t *live_model(uint64_t id)
{
    if (id == 0 || id > (uint64_t)n_models || !models[id - 1].alive)
        return NULL;
    return &models[id - 1];
}

static axclError load_bytes(const void *data, uint64_t size, uint64_t *modelId)
{
    if (!npu.load)
        return fail(E_NPU, "no NPU registered (run through scripts/with_npu_stub.sh --card)");
    if (!modelId || n_models == MAX_MODELS)
        return E_PARAM;
    AX_U64 m = 0;
    AX_U32 groups = 0;
    if (npu.load(data, (AX_U32)size, &m) != 0 || npu.count(m, &groups) != 0)
        return fail(E_NPU, "the NPU cannot load the model");
    pthread_mutex_lock(&lock);
    model_t *model = &models[n_models++];
    model->alive = 1;
    model->device = current->device;
    model->npu_model = m;
    model->groups = groups;
    *modelId = (uint64_t)n_models;
    pthread_mutex_unlock(&lock);
    return 0;
}

axclError axclrtEngineLoadFromFile(const char *path, uint64_t *modelId)
{
    if (need_context("axclrtEngineLoadFromFile"))
        return E_CONTEXT;
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (!f)
        return fail(E_PARAM, "axclrtEngineLoadFromFile: cannot open the model file");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = size > 0 ? malloc((size_t)size) : NULL;
    int ok = data && fread(data, 1, (size_t)size, f) == (size_t)size;
    fclose(f);
    axclError ret = ok ? load_bytes(data, (uint64_t)size, modelId) : E_PARAM;
    free(data);
    return ret;
}

axclError axclrtEngineLoadFromMem(const void *model, uint64_t size, uint64_t *modelId)
{
    if (need_context("axclrtEngineLoadFromMem"))
        return E_CONTEXT;
    pthread_mutex_lock(&lock);  /* the model bytes are in DEVICE memory (axclrtMalloc'd) */
    unsigned char *bytes = device_bytes(model, size, NULL);
    unsigned char *copy = bytes ? malloc(size) : NULL;
    if (copy)
        memcpy(copy, bytes, size);
    pthread_mutex_unlock(&lock);
    if (!copy)
        return fail(E_RANGE, "axclrtEngineLoadFromMem: the model is not in device memory");
    axclError ret = load_bytes(copy, size, modelId);
    free(copy);
    return ret;
}

const char *axclrtEngineGetModelCompilerVersion(uint64_t modelId)
{
    (void)modelId;
    return "stub-npu pulsar2 0.0";
}

axclError axclrtEngineUnload(uint64_t modelId)
{
    model_t *m = live_model(modelId);
    if (!m)
        return E_PARAM;
    m->alive = 0;
    return npu.unload ? npu.unload(m->npu_model) : 0;
}

axclError axclrtEngineGetIOInfo(uint64_t modelId, void **ioInfo)
{
    model_t *m = live_model(modelId);
    if (!m || !ioInfo)
        return E_PARAM;
    *ioInfo = m;  /* the info handle is the model */
    return 0;
}

static model_t *info_model(void *ioInfo)
{
    model_t *m = (model_t *)ioInfo;
    if (m < models || m >= models + n_models || !m->alive)
        return NULL;
    return m;
}

static AX_ENGINE_IO_INFO_T *group_info(void *ioInfo, uint32_t group)
{
    model_t *m = info_model(ioInfo);
    AX_ENGINE_IO_INFO_T *info = NULL;
    if (!m || group >= m->groups || npu.info(m->npu_model, group, &info) != 0)
        return NULL;
    return info;
}

axclError axclrtEngineGetShapeGroupsCount(void *ioInfo, int32_t *count)
{
    model_t *m = info_model(ioInfo);
    if (!m || !count)
        return E_PARAM;
    *count = (int32_t)m->groups;
    return 0;
}

uint32_t axclrtEngineGetNumInputs(void *ioInfo)
{
    AX_ENGINE_IO_INFO_T *i = group_info(ioInfo, 0);
    return i ? i->nInputSize : 0;
}

uint32_t axclrtEngineGetNumOutputs(void *ioInfo)
{
    AX_ENGINE_IO_INFO_T *i = group_info(ioInfo, 0);
    return i ? i->nOutputSize : 0;
}

static AX_ENGINE_IO_META_T *meta(void *ioInfo, uint32_t group, uint32_t index, int output)
{
    AX_ENGINE_IO_INFO_T *i = group_info(ioInfo, group);
    if (!i)
        return NULL;
    if (output)
        return index < i->nOutputSize ? &i->pOutputs[index] : NULL;
    return index < i->nInputSize ? &i->pInputs[index] : NULL;
}

uint64_t axclrtEngineGetInputSizeByIndex(void *ioInfo, uint32_t group, uint32_t index)
{
    AX_ENGINE_IO_META_T *m = meta(ioInfo, group, index, 0);
    return m ? m->nSize : 0;
}

uint64_t axclrtEngineGetOutputSizeByIndex(void *ioInfo, uint32_t group, uint32_t index)
{
    AX_ENGINE_IO_META_T *m = meta(ioInfo, group, index, 1);
    return m ? m->nSize : 0;
}

static axclError dims(AX_ENGINE_IO_META_T *m, axclrtEngineIODims *d)
{
    if (!m || !d || m->nShapeSize > AXCLRT_ENGINE_MAX_DIM_CNT)
        return E_PARAM;
    d->dimCount = m->nShapeSize;
    for (int i = 0; i < m->nShapeSize; i++)
        d->dims[i] = m->pShape[i];
    return 0;
}

axclError axclrtEngineGetInputDims(void *ioInfo, uint32_t group, uint32_t index,
                                   axclrtEngineIODims *d)
{
    return dims(meta(ioInfo, group, index, 0), d);
}

axclError axclrtEngineGetOutputDims(void *ioInfo, uint32_t group, uint32_t index,
                                    axclrtEngineIODims *d)
{
    return dims(meta(ioInfo, group, index, 1), d);
}

const char *axclrtEngineGetInputNameByIndex(void *ioInfo, uint32_t index)
{
    AX_ENGINE_IO_META_T *m = meta(ioInfo, 0, index, 0);
    return m ? m->pName : NULL;
}

const char *axclrtEngineGetOutputNameByIndex(void *ioInfo, uint32_t index)
{
    AX_ENGINE_IO_META_T *m = meta(ioInfo, 0, index, 1);
    return m ? m->pName : NULL;
}

/* AX_ENGINE_DATA_TYPE_T (what the NPU host declares) -> axclrtEngineDataType */
static int axcl_dtype(int engine)
{
    switch (engine) {
    case 1: return 4;    /* uint8 */
    case 2: return 6;    /* uint16 */
    case 3: return 15;   /* float32 */
    case 4: return 5;    /* int16 */
    case 5: return 3;    /* int8 */
    case 6: return 7;    /* int32 */
    case 7: return 8;    /* uint32 */
    case 9: return 14;   /* bfloat16 */
    default: return 0;
    }
}

int32_t axclrtEngineGetInputDataType(void *ioInfo, uint32_t index, int *type)
{
    AX_ENGINE_IO_META_T *m = meta(ioInfo, 0, index, 0);
    if (!m || !type)
        return E_PARAM;
    *type = axcl_dtype(m->eDataType);
    return 0;
}

int32_t axclrtEngineGetOutputDataType(void *ioInfo, uint32_t index, int *type)
{
    AX_ENGINE_IO_META_T *m = meta(ioInfo, 0, index, 1);
    if (!m || !type)
        return E_PARAM;
    *type = axcl_dtype(m->eDataType);
    return 0;
}

int32_t axclrtEngineGetInputDataLayout(void *ioInfo, uint32_t index, int *layout)
{
    if (!meta(ioInfo, 0, index, 0) || !layout)
        return E_PARAM;
    *layout = 0;
    return 0;
}

int32_t axclrtEngineGetOutputDataLayout(void *ioInfo, uint32_t index, int *layout)
{
    if (!meta(ioInfo, 0, index, 1) || !layout)
        return E_PARAM;
    *layout = 0;
    return 0;
}

static io_t *live_io(void *p)
{
    io_t *io = (io_t *)p;
    if (io < ios || io >= ios + n_ios || io->magic != IO_MAGIC || !io->alive)
        return NULL;
    return io;
}

axclError axclrtEngineCreateIO(void *ioInfo, void **io)
{
    model_t *m = info_model(ioInfo);
    if (!m || !io || n_ios == MAX_IOS)
        return E_PARAM;
    pthread_mutex_lock(&lock);
    io_t *p = &ios[n_ios++];
    memset(p, 0, sizeof(*p));
    p->magic = IO_MAGIC;
    p->model = m;
    p->alive = 1;
    pthread_mutex_unlock(&lock);
    *io = p;
    return 0;
}

axclError axclrtEngineDestroyIO(void *io)
{
    io_t *p = live_io(io);
    if (!p)
        return E_PARAM;
    p->alive = 0;
    return 0;
}

static axclError set_buffer(void *io, uint32_t index, const void *buf, uint64_t size, int output)
{
    io_t *p = live_io(io);
    if (!p || index >= MAX_IO)
        return E_PARAM;
    if (!in_device_space(buf))
        return fail(E_RANGE, "an engine IO buffer must be device memory");
    (output ? p->out : p->in)[index] = (void *)buf;
    (output ? p->out_size : p->in_size)[index] = size;
    return 0;
}

static axclError get_buffer(void *io, uint32_t index, void **buf, uint64_t *size, int output)
{
    io_t *p = live_io(io);
    if (!p || index >= MAX_IO || !buf || !size)
        return E_PARAM;
    *buf = (output ? p->out : p->in)[index];
    *size = (output ? p->out_size : p->in_size)[index];
    return 0;
}

axclError axclrtEngineSetInputBufferByIndex(void *io, uint32_t index, const void *buf,
                                            uint64_t size)
{
    return set_buffer(io, index, buf, size, 0);
}

axclError axclrtEngineSetOutputBufferByIndex(void *io, uint32_t index, const void *buf,
                                             uint64_t size)
{
    return set_buffer(io, index, buf, size, 1);
}

axclError axclrtEngineGetInputBufferByIndex(void *io, uint32_t index, void **buf, uint64_t *size)
{
    return get_buffer(io, index, buf, size, 0);
}

axclError axclrtEngineGetOutputBufferByIndex(void *io, uint32_t index, void **buf,
                                             uint64_t *size)
{
    return get_buffer(io, index, buf, size, 1);
}

axclError axclrtEngineCreateContext(uint64_t modelId, uint64_t *contextId)
{
    model_t *m = live_model(modelId);
    if (!m || !contextId)
        return E_PARAM;
    pthread_mutex_lock(&lock);
    m->engine_ctx = next_engine_ctx++;
    *contextId = m->engine_ctx;
    pthread_mutex_unlock(&lock);
    return 0;
}

/* Resolve n IO buffers to the device blocks behind them, each holding the group's tensor. */
static int resolve(void **bufs, uint64_t *sizes, AX_ENGINE_IO_META_T *metas, AX_U32 n,
                   int device, void **out, const char *what)
{
    if (n > MAX_IO)
        return -1;
    for (AX_U32 i = 0; i < n; i++) {
        int on = -1;
        out[i] = bufs[i] && sizes[i] >= metas[i].nSize
                     ? device_bytes(bufs[i], metas[i].nSize, &on) : NULL;
        if (!out[i] || on != device) {
            fprintf(stderr, "axcl stub: %s %u (%s): no device buffer of %u bytes on card %d\n",
                    what, i, metas[i].pName, metas[i].nSize, device);
            return -1;
        }
    }
    return 0;
}

axclError axclrtEngineExecute(uint64_t modelId, uint64_t contextId, uint32_t group, void *io)
{
    if (need_context("axclrtEngineExecute"))
        return E_CONTEXT;
    model_t *m = live_model(modelId);
    io_t *p = live_io(io);
    if (!m || !p || p->model != m || contextId != m->engine_ctx)
        return fail(E_PARAM, "axclrtEngineExecute: bad model, context or IO");
    if (m->device != current->device)
        return fail(E_CONTEXT, "axclrtEngineExecute: the model lives on another card");
    AX_ENGINE_IO_INFO_T *info = group_info(m, group);
    void *ins[MAX_IO], *outs[MAX_IO];
    if (!info)
        return fail(E_PARAM, "axclrtEngineExecute: no such shape group");
    pthread_mutex_lock(&lock);
    int bad = resolve(p->in, p->in_size, info->pInputs, info->nInputSize, m->device, ins,
                      "input") ||
              resolve(p->out, p->out_size, info->pOutputs, info->nOutputSize, m->device, outs,
                      "output");
    pthread_mutex_unlock(&lock);
    if (bad)
        return E_RANGE;
    if (npu.run(m->npu_model, group, ins, outs) != 0)
        return fail(E_NPU, "axclrtEngineExecute: the NPU run failed");
    pthread_mutex_lock(&lock);
    stats[6] += 1;
    runs_by_device[m->device] += 1;
    pthread_mutex_unlock(&lock);
    return 0;
}

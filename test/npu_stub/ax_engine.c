/* libax_engine.so stand-in: AXERA's engine API over an "NPU" the test harness registers.
 *
 * Exports what pyaxengine's cdef declares for ax_engine_api.h (axengine/_axe_capi.py) except
 * AX_ENGINE_GetTotalOps: pyaxengine tells the chip by which symbols exist (_get_chip_type), and
 * an AX650N's library (MC50) has AX_ENGINE_SetAffinity but no AX_ENGINE_GetTotalOps.
 *
 * The model bytes, shape groups and tensor infos belong to the registered NPU (AX_STUB_SetNpu;
 * test/npu_stub/npu_host.py registers Python callbacks that run onnxruntime). A run resolves
 * every input and output buffer of the AX_ENGINE_IO_T by its phyAddr to the DEVICE side of
 * CMM (libax_sys) and hands only those to the NPU: what the CPU wrote but did not flush is not
 * seen, and outputs land on the device side until invalidated. Handles are slots of a table
 * that are never reused, so a call on a destroyed handle fails cleanly (-1).
 */
#include <stdio.h>
#include <string.h>

#include "ax_stub.h"

#define MAX_HANDLES 4096
#define MAX_IO 64
#define HANDLE_MAGIC 0xA650A650ULL

typedef struct {
    AX_U64 magic;
    AX_U64 model;
    uint64_t context;
    int alive;
} handle_t;

static handle_t handles[MAX_HANDLES];
static int n_handles;
static struct {
    AX_STUB_LOAD_FN load;
    AX_STUB_UNLOAD_FN unload;
    AX_STUB_COUNT_FN count;
    AX_STUB_INFO_FN info;
    AX_STUB_RUN_FN run;
} npu;

void AX_STUB_SetNpu(AX_STUB_LOAD_FN load, AX_STUB_UNLOAD_FN unload, AX_STUB_COUNT_FN count,
                    AX_STUB_INFO_FN info, AX_STUB_RUN_FN run)
{
    npu.load = load;
    npu.unload = unload;
    npu.count = count;
    npu.info = info;
    npu.run = run;
}

static handle_t *live(uint64_t *h)
{
    handle_t *p = (handle_t *)h;
    if (p < handles || p >= handles + n_handles || p->magic != HANDLE_MAGIC || !p->alive) {
        fprintf(stderr, "ax_engine stub: %p is not a live engine handle\n", (void *)h);
        return NULL;
    }
    return p;
}

const AX_CHAR *AX_ENGINE_GetVersion(AX_VOID) { return "stub-npu 1.0"; }
AX_VOID AX_ENGINE_NPUReset(AX_VOID) {}
AX_S32 AX_ENGINE_Init(AX_ENGINE_NPU_ATTR_T *pNpuAttr) { (void)pNpuAttr; return 0; }
AX_S32 AX_ENGINE_Deinit(AX_VOID) { return 0; }

AX_S32 AX_ENGINE_GetVNPUAttr(AX_ENGINE_NPU_ATTR_T *pNpuAttr)
{
    if (!pNpuAttr)
        return -1;
    memset(pNpuAttr, 0, sizeof(*pNpuAttr));  /* virtual NPU disabled */
    return 0;
}

AX_S32 AX_ENGINE_GetModelType(const AX_VOID *pData, AX_U32 nDataSize,
                              AX_ENGINE_MODEL_TYPE_T *pModelType)
{
    (void)pData;
    (void)nDataSize;
    if (!pModelType)
        return -1;
    *pModelType = AX_ENGINE_MODEL_TYPE0;  /* single core */
    return 0;
}

AX_S32 AX_ENGINE_CreateHandleV2(uint64_t **pHandle, const AX_VOID *pData, AX_U32 nDataSize,
                                AX_ENGINE_HANDLE_EXTRA_T *pExtraParam)
{
    (void)pExtraParam;
    if (!npu.load) {
        fprintf(stderr, "ax_engine stub: no NPU registered (run through scripts/with_npu_stub.sh)"
                "\n");
        return -1;
    }
    if (!pHandle || !pData || n_handles == MAX_HANDLES)
        return -1;
    AX_U64 model = 0;
    if (npu.load(pData, nDataSize, &model) != 0)
        return -1;
    handle_t *h = &handles[n_handles++];
    h->magic = HANDLE_MAGIC;
    h->model = model;
    h->alive = 1;
    *pHandle = (uint64_t *)h;
    return 0;
}

AX_S32 AX_ENGINE_DestroyHandle(uint64_t *nHandle)
{
    handle_t *h = live(nHandle);
    if (!h)
        return -1;
    h->alive = 0;
    return npu.unload ? npu.unload(h->model) : 0;
}

AX_S32 AX_ENGINE_CreateContextV2(uint64_t *nHandle, uint64_t **pContext)
{
    handle_t *h = live(nHandle);
    if (!h || !pContext)
        return -1;
    *pContext = &h->context;
    return 0;
}

AX_S32 AX_ENGINE_GetGroupIOInfoCount(uint64_t *nHandle, AX_U32 *pCount)
{
    handle_t *h = live(nHandle);
    return h && pCount ? npu.count(h->model, pCount) : -1;
}

AX_S32 AX_ENGINE_GetGroupIOInfo(uint64_t *nHandle, AX_U32 nIndex, AX_ENGINE_IO_INFO_T **pIO)
{
    handle_t *h = live(nHandle);
    return h && pIO ? npu.info(h->model, nIndex, pIO) : -1;
}

AX_S32 AX_ENGINE_GetIOInfo(uint64_t *nHandle, AX_ENGINE_IO_INFO_T **pIO)
{
    return AX_ENGINE_GetGroupIOInfo(nHandle, 0, pIO);
}

AX_S32 AX_ENGINE_GetHandleModelType(uint64_t *nHandle, AX_ENGINE_MODEL_TYPE_T *pModelType)
{
    if (!live(nHandle) || !pModelType)
        return -1;
    *pModelType = AX_ENGINE_MODEL_TYPE0;
    return 0;
}

/* Resolve n buffers to device pointers, each at least the size the group's tensor needs. */
static int resolve(AX_ENGINE_IO_BUFFER_T *bufs, AX_U32 nbufs, AX_ENGINE_IO_META_T *metas,
                   AX_U32 n, void **out, const char *what)
{
    if (n > MAX_IO || nbufs < n || (n && !bufs))
        return -1;
    for (AX_U32 i = 0; i < n; i++) {
        if (bufs[i].nSize < metas[i].nSize) {
            fprintf(stderr, "ax_engine stub: %s %u buffer has %u bytes, %s needs %u\n", what, i,
                    bufs[i].nSize, metas[i].pName, metas[i].nSize);
            return -1;
        }
        out[i] = AX_STUB_DevicePtr(bufs[i].phyAddr, metas[i].nSize);
        if (!out[i]) {
            fprintf(stderr, "ax_engine stub: %s %u (%s) at 0x%llx is not CMM\n", what, i,
                    metas[i].pName, bufs[i].phyAddr);
            return -1;
        }
    }
    return 0;
}

AX_S32 AX_ENGINE_RunGroupIOSync(uint64_t *handle, uint64_t *context, AX_U32 nIndex,
                                AX_ENGINE_IO_T *pIO)
{
    handle_t *h = live(handle);
    AX_ENGINE_IO_INFO_T *info = NULL;
    void *ins[MAX_IO], *outs[MAX_IO];
    if (!h || context != &h->context || !pIO || npu.info(h->model, nIndex, &info) != 0)
        return -1;
    if (resolve(pIO->pInputs, pIO->nInputSize, info->pInputs, info->nInputSize, ins, "input") ||
        resolve(pIO->pOutputs, pIO->nOutputSize, info->pOutputs, info->nOutputSize, outs,
                "output"))
        return -1;
    return npu.run(h->model, nIndex, ins, outs);
}

AX_S32 AX_ENGINE_RunSyncV2(uint64_t *handle, uint64_t *context, AX_ENGINE_IO_T *pIO)
{
    return AX_ENGINE_RunGroupIOSync(handle, context, 0, pIO);  /* group 0, as on the board */
}

AX_S32 AX_ENGINE_SetAffinity(uint64_t *nHandle, AX_ENGINE_NPU_SET_T nNpuSet)
{
    (void)nNpuSet;
    return live(nHandle) ? 0 : -1;
}

AX_S32 AX_ENGINE_GetAffinity(uint64_t *nHandle, AX_ENGINE_NPU_SET_T *pNpuSet)
{
    if (!live(nHandle) || !pNpuSet)
        return -1;
    *pNpuSet = 0;
    return 0;
}

AX_S32 AX_ENGINE_GetCMMUsage(uint64_t *nHandle, AX_ENGINE_CMM_INFO_T *pCMMInfo)
{
    if (!live(nHandle) || !pCMMInfo)
        return -1;
    pCMMInfo->nCMMSize = 0;
    return 0;
}

const AX_CHAR *AX_ENGINE_GetModelToolsVersion(uint64_t *nHandle)
{
    (void)nHandle;
    return "stub-npu pulsar2 0.0";
}

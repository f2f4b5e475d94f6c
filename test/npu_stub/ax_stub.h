/* Types of AXERA's ax_base_type.h / ax_engine_type.h as pyaxengine's cffi cdef declares them
 * (axengine/_axe_capi.py, 64-bit layout), plus the stub-only calls the test harness uses. */
#ifndef AX_STUB_H
#define AX_STUB_H
#include <stdint.h>

typedef int AX_S32;
typedef unsigned int AX_U32;
typedef unsigned long long int AX_U64;
typedef unsigned char AX_U8;
typedef signed char AX_S8;
typedef char AX_CHAR;
typedef void AX_VOID;
typedef enum { AX_FALSE = 0, AX_TRUE = 1 } AX_BOOL;
typedef AX_U32 AX_ENGINE_NPU_SET_T;

typedef enum { AX_ENGINE_VIRTUAL_NPU_DISABLE = 0 } AX_ENGINE_NPU_MODE_T;
typedef enum { AX_ENGINE_MODEL_TYPE0 = 0 } AX_ENGINE_MODEL_TYPE_T;
typedef struct { AX_ENGINE_NPU_MODE_T eHardMode; AX_U32 reserve[8]; } AX_ENGINE_NPU_ATTR_T;
typedef struct { int eColorSpace; AX_U64 u64Reserved[18]; } AX_ENGINE_IO_META_EX_T;
typedef struct { AX_ENGINE_NPU_SET_T nNpuSet; AX_S8 *pName; AX_U32 reserve[8]; }
    AX_ENGINE_HANDLE_EXTRA_T;
typedef struct { AX_U32 nCMMSize; } AX_ENGINE_CMM_INFO_T;
typedef struct { AX_U32 nWbtIndex; AX_U64 u64Reserved[7]; } AX_ENGINE_IO_SETTING_T;

typedef struct {
    AX_CHAR *pName;
    AX_S32 *pShape;
    AX_U8 nShapeSize;
    int eLayout;
    int eMemoryType;
    int eDataType;
    AX_ENGINE_IO_META_EX_T *pExtraMeta;
    AX_U32 nSize;
    AX_U32 nQuantizationValue;
    AX_S32 *pStride;
    AX_U64 u64Reserved[9];
} AX_ENGINE_IO_META_T;

typedef struct {
    AX_ENGINE_IO_META_T *pInputs;
    AX_U32 nInputSize;
    AX_ENGINE_IO_META_T *pOutputs;
    AX_U32 nOutputSize;
    AX_U32 nMaxBatchSize;
    AX_BOOL bDynamicBatchSize;
    AX_U64 u64Reserved[11];
} AX_ENGINE_IO_INFO_T;

typedef struct {
    AX_U64 phyAddr;
    AX_VOID *pVirAddr;
    AX_U32 nSize;
    AX_S32 *pStride;
    AX_U8 nStrideSize;
    AX_U64 u64Reserved[11];
} AX_ENGINE_IO_BUFFER_T;

typedef struct {
    AX_ENGINE_IO_BUFFER_T *pInputs;
    AX_U32 nInputSize;
    AX_ENGINE_IO_BUFFER_T *pOutputs;
    AX_U32 nOutputSize;
    AX_U32 nBatchSize;
    AX_ENGINE_IO_SETTING_T *pIoSetting;
    AX_U64 u64Reserved[10];
} AX_ENGINE_IO_T;

/* Stub only (libax_sys): the device side of [phy, phy + size), NULL unless it lies in one
 * CMM block; counters of the cache maintenance done (bytes and calls, flush then invalidate). */
void *AX_STUB_DevicePtr(AX_U64 phy, AX_U64 size);
void AX_STUB_GetStats(AX_U64 out[4]);
void AX_STUB_ResetStats(void);

/* Stub only (libax_engine): the "NPU" the test harness registers (Python callbacks). */
typedef AX_S32 (*AX_STUB_LOAD_FN)(const AX_VOID *data, AX_U32 size, AX_U64 *model);
typedef AX_S32 (*AX_STUB_UNLOAD_FN)(AX_U64 model);
typedef AX_S32 (*AX_STUB_COUNT_FN)(AX_U64 model, AX_U32 *count);
typedef AX_S32 (*AX_STUB_INFO_FN)(AX_U64 model, AX_U32 group, AX_ENGINE_IO_INFO_T **info);
typedef AX_S32 (*AX_STUB_RUN_FN)(AX_U64 model, AX_U32 group, void **inputs, void **outputs);
void AX_STUB_SetNpu(AX_STUB_LOAD_FN load, AX_STUB_UNLOAD_FN unload, AX_STUB_COUNT_FN count,
                    AX_STUB_INFO_FN info, AX_STUB_RUN_FN run);
#endif

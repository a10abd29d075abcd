/*
 * Run a TVM Relax artifact (an edgec stage's model.tvm.so) on one float32 input, in C.
 *
 * The tests cross-compile this file with aarch64-linux-gnu-gcc, link it against the aarch64
 * TVM runtime (libtvm_runtime.so + libtvm_ffi.so from the official apache-tvm and
 * apache-tvm-ffi aarch64 wheels) and run it under qemu-aarch64: the Raspberry Pi build then
 * really executes on an aarch64 CPU model, with the same runtime a board would use, and no
 * Python or TVM compiler is involved.
 *
 * It does what tvm.runtime.vm.VirtualMachine does in Python: load the library, call
 * vm_load_executable, vm_initialization(cpu, 0, pooled allocator), then main(input).
 *
 * usage: run_relax_vm MODEL.so INPUT.f32 OUTPUT.f32 DIM...
 *   INPUT.f32 / OUTPUT.f32: raw little-endian float32; DIMs: the input's shape.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tvm/ffi/c_api.h>

static const int64_t kPooledAllocator = 2;

static void die(const char* what) {
  TVMFFIObjectHandle err = NULL;
  TVMFFIErrorMoveFromRaised(&err);
  if (err) {
    TVMFFIErrorCell* cell = (TVMFFIErrorCell*)((char*)err + sizeof(TVMFFIObject));
    fprintf(stderr, "%s: %.*s: %.*s\n", what, (int)cell->kind.size, cell->kind.data,
            (int)cell->message.size, cell->message.data);
  } else {
    fprintf(stderr, "%s failed\n", what);
  }
  exit(1);
}

static TVMFFIObjectHandle global(const char* name) {
  TVMFFIByteArray bytes = {name, strlen(name)};
  TVMFFIObjectHandle func = NULL;
  if (TVMFFIFunctionGetGlobal(&bytes, &func) != 0 || func == NULL) die(name);
  return func;
}

static TVMFFIAny value(int32_t type_index) {
  TVMFFIAny any;
  memset(&any, 0, sizeof(any));
  any.type_index = type_index;
  return any;
}

static TVMFFIAny str(const char* text) {
  TVMFFIAny any = value(kTVMFFIRawStr);
  any.v_c_str = text;
  return any;
}

static TVMFFIAny int64(int64_t number) {
  TVMFFIAny any = value(kTVMFFIInt);
  any.v_int64 = number;
  return any;
}

static TVMFFIAny call(TVMFFIObjectHandle func, TVMFFIAny* args, int count, const char* what) {
  TVMFFIAny result = value(kTVMFFINone);
  if (TVMFFIFunctionCall(func, args, count, &result) != 0) die(what);
  return result;
}

static TVMFFIObjectHandle get_function(TVMFFIAny module, const char* name) {
  TVMFFIAny query_imports = value(kTVMFFIBool);
  TVMFFIAny args[3] = {module, str(name), query_imports};
  TVMFFIAny func = call(global("ffi.ModuleGetFunction"), args, 3, name);
  if (func.type_index != kTVMFFIFunction) {
    fprintf(stderr, "%s is not in the module\n", name);
    exit(1);
  }
  return func.v_obj;
}

int main(int argc, char** argv) {
  if (argc < 5 || argc > 12) {
    fprintf(stderr, "usage: %s MODEL.so INPUT.f32 OUTPUT.f32 DIM...\n", argv[0]);
    return 2;
  }
  int ndim = argc - 4;
  int64_t shape[8];
  size_t count = 1;
  for (int i = 0; i < ndim; ++i) {
    shape[i] = atoll(argv[4 + i]);
    count *= (size_t)shape[i];
  }
  float* data = malloc(count * sizeof(float));
  FILE* in = fopen(argv[2], "rb");
  if (!in || fread(data, sizeof(float), count, in) != count) {
    fprintf(stderr, "cannot read %zu floats from %s\n", count, argv[2]);
    return 1;
  }
  fclose(in);

  TVMFFIAny path = str(argv[1]);
  TVMFFIAny library = call(global("ffi.ModuleLoadFromFile"), &path, 1, "load");
  TVMFFIAny vm = call(get_function(library, "vm_load_executable"), NULL, 0, "load executable");
  TVMFFIAny init_args[3] = {int64(kDLCPU), int64(0), int64(kPooledAllocator)};
  call(get_function(vm, "vm_initialization"), init_args, 3, "vm_initialization");

  DLTensor input;
  memset(&input, 0, sizeof(input));
  input.data = data;
  input.device.device_type = kDLCPU;
  input.ndim = ndim;
  input.dtype.code = kDLFloat;
  input.dtype.bits = 32;
  input.dtype.lanes = 1;
  input.shape = shape;
  TVMFFIAny arg = value(kTVMFFIDLTensorPtr);
  arg.v_ptr = &input;
  TVMFFIAny out = call(get_function(vm, "main"), &arg, 1, "main");
  if (out.type_index != kTVMFFITensor) {
    fprintf(stderr, "main returned type %d, not one tensor\n", out.type_index);
    return 1;
  }
  DLTensor* result = (DLTensor*)((char*)out.v_obj + sizeof(TVMFFIObject));
  size_t outputs = 1;
  for (int i = 0; i < result->ndim; ++i) outputs *= (size_t)result->shape[i];
  FILE* sink = fopen(argv[3], "wb");
  if (!sink) return 1;
  fwrite((char*)result->data + result->byte_offset, sizeof(float), outputs, sink);
  fclose(sink);
  printf("ok %zu outputs\n", outputs);
  return 0;
}

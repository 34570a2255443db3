// passc-run: runs a passc artifact's model.so with no Python, through the TVM runtime.
//
//   passc-run model.so [--function NAME] in_1.bin ... in_N.bin out_1.bin ... out_M.bin
//
// Runs the entry point NAME (default "main"). Its inputs and outputs (names, shapes, dtypes,
// order) are read from manifest.json beside model.so. Each .bin file holds one tensor's raw bytes, C order, little endian: exactly
// prod(shape) * itemsize bytes. Runtime parameters (packed weights) listed under "params" are read
// from params.bin beside model.so and passed after the inputs. TVM_NUM_THREADS sets the number of
// worker threads; unset, it defaults to the manifest's target.threads.
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

constexpr const char* kDefaultEntry = "main";

// TVM's kernels assume 64-byte aligned tensors (kAllocAlignment) and load them with aligned vector
// instructions: malloc's 16 bytes crash AVX-512 code.
constexpr size_t kAlignment = 64;

struct CPUAlloc {
  void AllocData(DLTensor* t) {
    size_t size = std::max<size_t>(ffi::GetDataSize(*t), 1);
    t->data = std::aligned_alloc(kAlignment, (size + kAlignment - 1) / kAlignment * kAlignment);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  DLDataType dtype;
};

[[noreturn]] void Fail(const std::string& msg) {
  std::cerr << "passc-run: error: " << msg << std::endl;
  std::exit(1);
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) Fail("cannot read " + path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

std::vector<TensorSpec> ReadSpecs(const ffi::json::Object& manifest, const char* key) {
  std::vector<TensorSpec> specs;
  for (const ffi::Any& item : manifest.at(key).cast<ffi::json::Array>()) {
    auto obj = item.cast<ffi::json::Object>();
    TensorSpec spec;
    spec.name = std::string(obj.at("name").cast<ffi::String>());
    for (const ffi::Any& dim : obj.at("shape").cast<ffi::json::Array>()) {
      spec.shape.push_back(dim.cast<int64_t>());
    }
    spec.dtype = ffi::StringToDLDataType(obj.at("dtype").cast<ffi::String>());
    specs.push_back(spec);
  }
  return specs;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "x" : "") + std::to_string(shape[i]);
  return s.empty() ? "scalar" : s;
}

// A tensor of `spec` filled from `bytes[offset, offset + size)`; `what` names the source in errors.
ffi::Tensor MakeTensor(const TensorSpec& spec, const std::string& bytes, size_t offset, size_t size,
                       const std::string& what) {
  DLDevice cpu{kDLCPU, 0};
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::ShapeView(spec.shape.data(), spec.shape.size()),
                                           spec.dtype, cpu);
  size_t expected = ffi::GetDataSize(t);
  if (size != expected || offset + size > bytes.size()) {
    Fail(what + " has " + std::to_string(size) + " bytes; '" + spec.name + "' (" +
         std::string(ffi::DLDataTypeToString(spec.dtype)) + " " + ShapeString(spec.shape) +
         ") needs " + std::to_string(expected));
  }
  std::memcpy(t.data_ptr(), bytes.data() + offset, expected);
  return t;
}

ffi::Tensor LoadInput(const TensorSpec& spec, const std::string& path) {
  std::string bytes = ReadFile(path);
  return MakeTensor(spec, bytes, 0, bytes.size(), path);
}

// Appends the runtime parameters listed under signature["params"], read from params.bin.
void LoadParams(const ffi::json::Object& signature, const std::string& dir, std::vector<ffi::Any>* args) {
  if (!signature.count("params")) return;
  std::vector<TensorSpec> specs = ReadSpecs(signature, "params");
  std::string blob = ReadFile(dir + "/params.bin");
  auto entries = signature.at("params").cast<ffi::json::Array>();
  for (size_t i = 0; i < specs.size(); ++i) {
    auto entry = entries[i].cast<ffi::json::Object>();
    size_t offset = static_cast<size_t>(entry.at("offset").cast<int64_t>());
    size_t size = static_cast<size_t>(entry.at("nbytes").cast<int64_t>());
    args->push_back(MakeTensor(specs[i], blob, offset, size, "params.bin entry " + specs[i].name));
  }
}

void WriteOutput(const ffi::Tensor& t, const TensorSpec& spec, const std::string& path) {
  ffi::ShapeView view = t.shape();
  std::vector<int64_t> shape(view.begin(), view.end());
  if (shape != spec.shape) {
    Fail("output '" + spec.name + "' has shape " + ShapeString(shape) + ", manifest says " +
         ShapeString(spec.shape));
  }
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(ffi::GetDataSize(t)));
  if (!f) Fail("cannot write " + path);
}

}  // namespace

int main(int argc, char** argv) {
  // The arguments without "--function NAME", which may come anywhere after model.so.
  std::string entry = kDefaultEntry;
  std::vector<char*> files;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--function") == 0) {
      if (i + 1 == argc) Fail("--function needs a function name");
      entry = argv[++i];
    } else {
      files.push_back(argv[i]);
    }
  }
  if (files.empty()) {
    std::cerr << "usage: passc-run model.so [--function NAME] in_1.bin ... in_N.bin out_1.bin ... out_M.bin"
              << std::endl;
    return 2;
  }
  try {
    std::string so_path = files[0];
    if (so_path.find('/') == std::string::npos) so_path = "./" + so_path;  // dlopen searches paths
    size_t slash = so_path.find_last_of('/');
    std::string dir = so_path.substr(0, slash);
    auto manifest = ffi::json::Parse(ReadFile(dir + "/manifest.json")).cast<ffi::json::Object>();
    // The manifest lists each entry point's signature under "functions".
    auto functions = manifest.at("functions").cast<ffi::json::Object>();
    if (!functions.count(entry)) {
      std::string known;
      for (const auto& item : functions) known += (known.empty() ? "" : ", ") + std::string(item.first.cast<ffi::String>());
      Fail("the artifact has no function '" + entry + "' (its functions: " + known + ")");
    }
    auto signature = functions.at(entry).cast<ffi::json::Object>();
    std::vector<TensorSpec> inputs = ReadSpecs(signature, "inputs");
    int64_t threads = manifest.at("target").cast<ffi::json::Object>().at("threads").cast<int64_t>();
    setenv("TVM_NUM_THREADS", std::to_string(threads).c_str(), /*overwrite=*/0);  // before TVM starts
    std::vector<TensorSpec> outputs = ReadSpecs(signature, "outputs");
    size_t want = 1 + inputs.size() + outputs.size();
    if (files.size() != want) {
      std::cerr << "usage: passc-run model.so";
      if (entry != kDefaultEntry) std::cerr << " --function " << entry;
      for (auto& s : inputs) std::cerr << " " << s.name << ".bin";
      for (auto& s : outputs) std::cerr << " " << s.name << ".bin";
      std::cerr << std::endl;
      return 2;
    }

    ffi::Module lib = ffi::Module::LoadFromFile(so_path);
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    // (device type, device id, allocator) for the CPU; 2 = pooled allocator.
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
    ffi::Function main_fn = vm->GetFunction(entry).value();

    std::vector<ffi::Any> args;
    for (size_t i = 0; i < inputs.size(); ++i) args.push_back(LoadInput(inputs[i], files[1 + i]));
    LoadParams(signature, dir, &args);
    std::vector<ffi::AnyView> views(args.begin(), args.end());
    ffi::Any result;
    main_fn.CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);

    std::vector<ffi::Tensor> results;
    if (auto arr = result.as<ffi::Array<ffi::Any>>()) {
      for (const ffi::Any& r : *arr) results.push_back(r.cast<ffi::Tensor>());
    } else {
      results.push_back(result.cast<ffi::Tensor>());
    }
    if (results.size() != outputs.size()) {
      Fail("model returned " + std::to_string(results.size()) + " outputs, manifest lists " +
           std::to_string(outputs.size()));
    }
    for (size_t i = 0; i < outputs.size(); ++i) {
      WriteOutput(results[i], outputs[i], files[1 + inputs.size() + i]);
    }
  } catch (const ffi::Error& e) {
    Fail(e.what());
  }
  return 0;
}

// Drives a built librvrt_gda_plugin.so through the IPluginV3 calls TensorRT makes before any GPU
// work (creator lookup, attribute parsing, serialization round trip, type/format/shape
// negotiation), using only the TensorRT headers: it runs where TensorRT's libraries and GPUs
// are absent. Kernel execution is covered by the GPU tests. Usage: plugin_interface_check LIB
#include "gda_plugin.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstring>

namespace
{

using namespace nvinfer1;

int gFailures = 0;

void check(bool condition, char const* what)
{
    if (!condition)
    {
        std::printf("FAILED: %s\n", what);
        ++gFailures;
    }
}

Dims dims(std::initializer_list<int64_t> values)
{
    Dims d{};
    d.nbDims = static_cast<int32_t>(values.size());
    int32_t i = 0;
    for (int64_t v : values)
        d.d[i++] = v;
    return d;
}

PluginTensorDesc desc(Dims const& d, DataType type)
{
    PluginTensorDesc t{};
    t.dims = d;
    t.type = type;
    t.format = TensorFormat::kLINEAR;
    return t;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::printf("usage: %s librvrt_gda_plugin.so\n", argv[0]);
        return 2;
    }
    void* library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr)
    {
        std::printf("FAILED: dlopen: %s\n", dlerror());
        return 1;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(library, "getCreators"));
    check(getCreators != nullptr, "getCreators is exported");
    check(dlsym(library, "setLoggerFinder") != nullptr, "setLoggerFinder is exported");
    if (getCreators == nullptr)
        return 1;
    int32_t nbCreators = 0;
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    check(nbCreators == 1, "exactly one creator");
    check(std::strcmp(creators[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0, "creator is V3One");
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    check(std::strcmp(creator->getPluginName(), "GuidedDeformAttention") == 0, "creator name");
    check(std::strcmp(creator->getPluginVersion(), "1") == 0, "creator version");
    check(std::strcmp(creator->getPluginNamespace(), "rvrt") == 0, "creator namespace");
    PluginFieldCollection const* names = creator->getFieldNames();
    check(names->nbFields == 6, "six attribute fields");

    // As the ONNX parser passes INT attributes: kINT32, one element each.
    int32_t const values[6] = {3, 3, 1, 3, 6, 2};
    char const* const fieldNames[6] = {"kernel_h", "kernel_w", "padding", "heads", "groups", "clip"};
    PluginField fields[6];
    for (int32_t i = 0; i < 6; ++i)
        fields[i] = PluginField(fieldNames[i], &values[i], PluginFieldType::kINT32, 1);
    PluginFieldCollection collection{6, fields};
    IPluginV3* plugin = creator->createPlugin("gda", &collection, TensorRTPhase::kBUILD);
    check(plugin != nullptr, "createPlugin with all attributes");
    PluginFieldCollection missing{5, fields};
    check(creator->createPlugin("gda", &missing, TensorRTPhase::kBUILD) == nullptr, "createPlugin rejects a missing attribute");
    if (plugin == nullptr)
        return 1;

    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(core && build && runtime, "core, build and runtime capabilities");
    check(std::strcmp(core->getPluginNamespace(), "rvrt") == 0, "plugin namespace");

    PluginFieldCollection const* serialized = runtime->getFieldsToSerialize();
    IPluginV3* restored = creator->createPlugin("gda", serialized, TensorRTPhase::kRUNTIME);
    check(restored != nullptr, "createPlugin from serialized fields");
    auto* restoredRuntime
        = static_cast<IPluginV3OneRuntime*>(restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* again = restoredRuntime->getFieldsToSerialize();
    bool same = again->nbFields == serialized->nbFields;
    for (int32_t i = 0; same && i < again->nbFields; ++i)
        same = std::strcmp(again->fields[i].name, serialized->fields[i].name) == 0
            && *static_cast<int32_t const*>(again->fields[i].data) == values[i];
    check(same, "serialization round trip keeps every attribute");

    DataType out{};
    DataType const floats[3] = {DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT};
    DataType const halves[3] = {DataType::kHALF, DataType::kHALF, DataType::kHALF};
    DataType const ints[3] = {DataType::kINT32, DataType::kINT32, DataType::kINT32};
    check(build->getOutputDataTypes(&out, 1, floats, 3) == 0 && out == DataType::kFLOAT, "float32 in, float32 out");
    check(build->getOutputDataTypes(&out, 1, halves, 3) == 0 && out == DataType::kHALF, "float16 in, float16 out");
    check(build->getOutputDataTypes(&out, 1, ints, 3) != 0, "int32 inputs rejected");
    check(build->getNbOutputs() == 1, "one output");
    check(build->getWorkspaceSize(nullptr, 3, nullptr, 1) == 0, "no workspace");

    // B = 1, clip = 2, C = 12, H = 5, W = 7, groups 6, 3x3: offset channels 2*6*9*2 = 216.
    PluginTensorDesc io[4] = {desc(dims({2, 1, 12, 5, 7}), DataType::kFLOAT),
        desc(dims({1, 2, 24, 5, 7}), DataType::kFLOAT), desc(dims({2, 216, 5, 7}), DataType::kFLOAT),
        desc(dims({2, 1, 12, 5, 7}), DataType::kFLOAT)};
    DynamicPluginTensorDesc dynamic[4]{};
    for (int32_t i = 0; i < 4; ++i)
        dynamic[i].desc = io[i];
    check(build->supportsFormatCombination(0, dynamic, 3, 1), "linear float32 q supported");
    dynamic[0].desc.format = TensorFormat::kCHW32;
    check(!build->supportsFormatCombination(0, dynamic, 3, 1), "vectorized formats refused");
    dynamic[0].desc = io[0];
    dynamic[1].desc.type = DataType::kHALF;
    check(!build->supportsFormatCombination(1, dynamic, 3, 1), "mixed float32/float16 refused");
    check(runtime->onShapeChange(io, 3, io + 3, 1) == 0, "consistent shapes accepted");
    io[2].dims = dims({2, 215, 5, 7});
    check(runtime->onShapeChange(io, 3, io + 3, 1) != 0, "wrong offset channel count refused");

    delete restored;
    delete plugin;
    std::printf(gFailures == 0 ? "OK\n" : "%d checks failed\n", gFailures);
    return gFailures == 0 ? 0 : 1;
}

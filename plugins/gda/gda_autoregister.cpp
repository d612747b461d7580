// Registers the creator with TensorRT's global registry as soon as the library is loaded, for
// loaders that only dlopen (ctypes.CDLL, Polygraphy --plugins). Built as a separate library: a
// library that registers on load and also exports getCreators would make loadLibrary fail
// with "already registered".
#include "gda_plugin.h"

namespace
{

struct RegisterWhenLoaded
{
    RegisterWhenLoaded() noexcept
    {
        nvinfer1::IPluginRegistry* const registry = getPluginRegistry();
        if (registry == nullptr || !registry->registerCreator(rvrt::gda::pluginCreator(), rvrt::gda::kPluginNamespace))
            rvrt::gda::logMessage(nvinfer1::ILogger::Severity::kERROR,
                "rvrt::GuidedDeformAttention: registering the plugin creator with TensorRT failed");
    }
};

RegisterWhenLoaded const registerWhenLoaded;

} // namespace

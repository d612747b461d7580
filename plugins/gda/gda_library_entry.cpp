// Entry points of a TensorRT plugin shared library (IPluginRegistry::loadLibrary, trtexec
// --dynamicPlugins, --setPluginsToSerialize): TensorRT calls getCreators and registers what it
// returns, and hands over its logger through setLoggerFinder. This library does not link
// libnvinfer, so one build serves any TensorRT 10.x/11.x runtime with the same plugin ABI.
#include "gda_plugin.h"

#define RVRT_GDA_EXPORT extern "C" __attribute__((visibility("default")))

RVRT_GDA_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    rvrt::gda::setPluginLoggerFinder(finder);
}

RVRT_GDA_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) noexcept
{
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&rvrt::gda::pluginCreator()};
    nbCreators = 1;
    return creators;
}

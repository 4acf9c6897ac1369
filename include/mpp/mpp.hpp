// mpp — Python's multiprocessing for C++20. The umbrella header: includes every public header.
#pragma once

#include "array.hpp"
#include "codec.hpp"
#include "detail/config.hpp"  // first: "mpp needs C++20" before any other error
#include "errors.hpp"
#include "futures.hpp"
#include "manager.hpp"
#include "options.hpp"
#include "pipe.hpp"
#include "pool.hpp"
#include "process.hpp"
#include "progress.hpp"
#include "queue.hpp"
#include "segment.hpp"
#include "shared_memory.hpp"
#include "shared_memory_manager.hpp"
#include "sync.hpp"
#include "timeout.hpp"
#include "value.hpp"
#include "version.hpp"

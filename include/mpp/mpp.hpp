// mpp — Python's multiprocessing for C++20. The umbrella header: includes every public header.
#pragma once

#include "detail/config.hpp"  // first: "mpp needs C++20" before any other error
#include "version.hpp"
#include "codec.hpp"
#include "errors.hpp"
#include "options.hpp"
#include "timeout.hpp"
#include "segment.hpp"
#include "shared_memory.hpp"
#include "sync.hpp"
#include "value.hpp"
#include "array.hpp"
#include "pipe.hpp"
#include "queue.hpp"
#include "manager.hpp"
#include "process.hpp"
#include "pool.hpp"
#include "futures.hpp"

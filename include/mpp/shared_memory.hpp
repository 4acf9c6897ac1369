// mpp — SharedMemory and ShareableList (Python's multiprocessing.shared_memory).
// SharedMemory is a named block of raw bytes (on POSIX exactly those bytes, with no header, so
// Python can attach to it); size() is exactly the size asked for (cpython#101623) and, with
// track=true, the name is removed when the last process using the block lets go, never while
// another live process is still attached (gh-82300). ShareableList, which lives in such a block,
// is a fixed-length list of int64 / double / bool / string / bytes / None slots that keeps
// strings and bytes byte-exact: trailing NULs and multi-byte UTF-8 survive (cpython#106939,
// #96779).
#pragma once

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "codec.hpp"
#include "detail/name_codec.hpp"
#include "detail/shared_block.hpp"  // detail::BlockHandle
#include "errors.hpp"
#include "segment.hpp"

namespace mpp {

namespace detail {
/// Python's repr of a str (`'a\'b'`) or, with `bytes`, of a bytes object (`b'\x00a'`): quoted,
/// with backslash escapes for quotes, backslashes and control characters (and, for bytes, for
/// every byte outside printable ASCII; UTF-8 text is shown as it is).
inline std::string py_repr_text(std::string_view s, bool bytes) {
  const bool dq = s.find('\'') != std::string_view::npos && s.find('"') == std::string_view::npos;
  const char q = dq ? '"' : '\'';
  std::string out = bytes ? "b" : "";
  out += q;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (ch == q || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (ch == '\n') {
      out += "\\n";
    } else if (ch == '\r') {
      out += "\\r";
    } else if (ch == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f || (bytes && c >= 0x80)) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += ch;
    }
  }
  out += q;
  return out;
}
}  // namespace detail

/// Python's SharedMemory: a block of shared bytes with a name.
///
/// Creation backs every byte with memory (POSIX: fallocate on /dev/shm), so a full /dev/shm is a
/// NoSpaceError from the constructor, never a block that exists in this process only. buf() is
/// raw memory that mpp cannot watch, so damage done by another process is reported at the calls
/// mpp controls: buf(), size() and live_users() raise CorruptedError naming the block when it is
/// smaller than this process mapped it (another process truncated it; one fstat), or when this
/// process touched a page that had vanished (it read zeros, and what it wrote there reached no
/// one; the touch itself never kills the process), and NoSpaceError when a page of a block
/// created sparse by another program could not be allocated. A truncation undone by growing the
/// block again before anyone touched the cut part only zeroes bytes, as any writer may.
class SharedMemory {
 public:
  //!Effects: Python's SharedMemory(name, create, size, track): creates the block `name` of
  //! `size` zeroed bytes when `create`, otherwise attaches to the existing block `name` (size is
  //! then ignored). With `track`, the name is removed when the last handle of the last attached
  //! process goes away; without it, only unlink() removes it. On POSIX the object holds exactly
  //! `size` bytes and nothing else, so other programs (Python's SharedMemory) can attach to it
  //! and it can attach to theirs.
  //! An empty name is refused as by every other kind (InvalidArgument): the anonymous block of
  //! Python's SharedMemory(create=True, size=n) is SharedMemory(n).
  //!Throws: InvalidArgument (bad or empty name, create with size 0), ExistsError, NotFoundError,
  //! TypeMismatchError (the name is another kind of object), NoSpaceError (/dev/shm has no room
  //! for `size` bytes), PermissionError (another user's object, or a directory, by that name),
  //! CorruptedError, OSError.
  SharedMemory(std::string_view name, bool create = false, std::size_t size = 0, bool track = true)
      : SharedMemory(create ? detail::BlockHandle::create(named(name), size, track)
                            : detail::BlockHandle::open(name, track)) {}

  //!Effects: creates an anonymous block of `size` zeroed bytes (a fresh "mpp.anon.*" name, as
  //! Python's SharedMemory(create=True, size=n)); forked children inherit it, and other
  //! processes can attach by name() while it lives.
  explicit SharedMemory(std::size_t size, bool track = true)
      : SharedMemory(detail::BlockHandle::create({}, size, track)) {}

  /// Creates the block `name` of `size` zeroed bytes (ExistsError if taken; InvalidArgument for
  /// an empty name, NoSpaceError if /dev/shm has no room for it).
  static SharedMemory create(std::string_view name, std::size_t size, bool track = true) {
    return SharedMemory(detail::BlockHandle::create(named(name), size, track));
  }
  /// Attaches to the existing block `name` (NotFoundError if absent).
  static SharedMemory open(std::string_view name, bool track = true) {
    return SharedMemory(detail::BlockHandle::open(name, track));
  }
  //!Effects: attaches to the block `name` if it exists, otherwise creates it with `size` zeroed
  //! bytes, as create() does; of processes calling this at the same time, one creates and the
  //! others attach.
  //!Throws: ValueError if the existing block's size is not `size` (it is left as it is),
  //! InvalidArgument (bad or empty name, size 0), and what create() and open() throw.
  static SharedMemory open_or_create(std::string_view name, std::size_t size, bool track = true) {
    named(name);
    if (size == 0)
      detail::fail<InvalidArgument>(
          "SharedMemory::open_or_create('{}', 0): the size must be positive (it is the size "
          "the block is created with)",
          name);
    for (int attempt = 0;; ++attempt) {
      try {
        return create(name, size, track);
      } catch (const ExistsError&) {
      }
      try {
        auto b = detail::BlockHandle::open(name, track);
        if (b->size() != size) {
          b->leave_name();  // not ours to remove: it is someone else's block
          detail::fail<ValueError>(
              "SharedMemory::open_or_create('{}', {}): the block exists with {} bytes; use the "
              "same size in every process, or open(name) to attach at any size",
              name, size, b->size());
        }
        return SharedMemory(std::move(b));
      } catch (const NotFoundError&) {
        if (attempt >= 100) throw;  // removed between our create and open: race again
      }
    }
  }

  //!Returns: the bytes of the block: exactly size() of them.
  //!Throws: ValueError after close(); CorruptedError naming the block if it shrank under this
  //! process (another process truncated it), NoSpaceError if a page of it could not be allocated.
  //! These are checked here (one fstat on POSIX) and by size(), live_users() and every
  //! ShareableList operation, the points mpp controls: the span itself is raw memory, so a
  //! truncation between two buf() calls shows as zeros in the vanished part (never a crash) and
  //! is reported at the next of these calls.
  std::span<std::byte> buf() const {
    auto& s = state("buf");
    s.note_use();  // a forked child using an inherited handle counts as a user
    s.check_size("buf()");
    return {s.data(), static_cast<std::size_t>(s.size())};
  }
  /// The block's name (pass it to SharedMemory(name) in another process); kept after close().
  const std::string& name() const { return record("name").name; }
  //!Returns: the size requested at creation (not rounded up to pages: cpython#101623); after
  //! close(), the size it had (as Python's). Throws: CorruptedError, NoSpaceError as buf().
  std::size_t size() const {
    if (!state_) return static_cast<std::size_t>(record("size").size);
    state_->check_size("size()");
    return static_cast<std::size_t>(state_->size());
  }
  /// Whether this handle applies the track rule when it goes away.
  bool track() const { return state_ ? state_->track() : record("track").track; }
  /// False after close().
  bool is_open() const noexcept { return state_ != nullptr; }

  //!Effects: Python's close(): this handle stops using the block (other copies of the handle
  //! and other processes are unaffected); buf() then throws. Idempotent.
  void close() noexcept { state_.reset(); }

  //!Effects: Python's unlink(): removes the name now, whoever else still uses it; mappings keep
  //! working, but no process can attach any more. Works after close() too, as in Python: when
  //! the close() of the last handle removed the name already (the track rule), this call is that
  //! removal. On Windows it does nothing (the name goes with the last handle), as Python's.
  //!Throws: NotFoundError (POSIX) if the name was gone already: unlink once across all handles.
  void unlink() { unlink_block(state_, record("unlink")); }

  /// Python's repr, also what fmt::format("{}", m) gives: `SharedMemory('mpp.x', size=4096)`.
  std::string repr() const {
    if (!record_) return "SharedMemory(<moved from>)";
    return fmt::format("SharedMemory({}, size={})", detail::py_repr_text(record_->name, false),
                       record_->size);
  }

  /// Handles using the block now, in any process, this one included (a killed process's are not
  /// counted; a forked child's inherited handle counts once the child uses it).
  std::uint32_t live_users() const {
    auto& s = state("live_users");
    s.check_size("live_users()");
    return s.live_users();
  }

 private:
  explicit SharedMemory(std::shared_ptr<detail::BlockHandle> s) noexcept
      : state_(std::move(s)), record_(state_->record()) {}

  // A name given as a name must be one: "" would otherwise mean an anonymous block.
  static std::string_view named(std::string_view name) {
    if (name.empty())
      detail::fail<InvalidArgument>(
          "invalid object name '': names must start with \"mpp.\" "
          "(for an anonymous block, use SharedMemory(size))");
    return name;
  }

  detail::BlockHandle& state(const char* what) const {
    if (!state_)
      detail::fail<ValueError>("SharedMemory::{}() on a closed handle of '{}'", what,
                               record_ ? record_->name : std::string("(moved from)"));
    return *state_;
  }
  detail::BlockRecord& record(const char* what) const {
    if (!record_) detail::fail<ValueError>("SharedMemory::{}() on a moved-from handle", what);
    return *record_;
  }

  // unlink() of a SharedMemory or ShareableList handle, open (`s`) or closed.
  static void unlink_block(const std::shared_ptr<detail::BlockHandle>& s, detail::BlockRecord& r) {
    if (s) return s->unlink();
    if (r.removed_at_close.exchange(false, std::memory_order_acq_rel)) return;
    detail::BlockHandle::unlink_name(r.name);
  }
  friend class ShareableList;

  std::shared_ptr<detail::BlockHandle> state_;
  std::shared_ptr<detail::BlockRecord> record_;
};

/// Python's None in a ShareableList.
using None = std::monostate;

/// One element of a ShareableList: None, int (64-bit), float, bool, str (UTF-8) or bytes.
using ShareableItem = std::variant<None, std::int64_t, double, bool, std::string, Bytes>;

namespace detail {

enum class SlotKind : std::uint8_t { none = 0, int64, float64, boolean, str, bytes };

/// ShareableListHeader::magic ("mpplist1"), stored last by the creator (release).
inline constexpr std::uint64_t kShareableListMagic = 0x317473696c70706dull;

/// Start of a ShareableList's block; then `count` SlotDesc, then the data area.
struct ShareableListHeader {
  std::uint64_t magic;  ///< kShareableListMagic once the list is filled; 0 before; atomic_ref
  std::uint64_t count;
  std::uint64_t data_size;
};
/// A slot: where its bytes live (fixed at creation) and what it holds now.
struct SlotDesc {
  std::uint64_t offset;    ///< from the start of the data area
  std::uint64_t capacity;  ///< bytes reserved (8 for scalars, like Python)
  std::uint64_t tag;       ///< kind in the low 8 bits, byte length in the high 32; atomic_ref
};
static_assert(std::is_standard_layout_v<SlotDesc> && sizeof(SlotDesc) == 24);
static_assert(std::atomic_ref<std::uint64_t>::is_always_lock_free);

constexpr std::uint64_t kSlotAlignment = 8;  // Python's ShareableList._alignment

/// Bytes a new slot reserves for `item`: 8 for scalars; for str/bytes Python's rule
/// 8 * (len / 8 + 1), counted in encoded bytes (Python counts characters: cpython#96779).
inline std::uint64_t slot_capacity(const ShareableItem& item) {
  if (const auto* s = std::get_if<std::string>(&item))
    return kSlotAlignment * (s->size() / kSlotAlignment + 1);
  if (const auto* b = std::get_if<Bytes>(&item))
    return kSlotAlignment * (b->size() / kSlotAlignment + 1);
  return kSlotAlignment;
}

}  // namespace detail

/// Python's ShareableList: a fixed-length list in shared memory whose slots hold int64, double,
/// bool, string, bytes or None. A slot reserves its space at creation (8 bytes for scalars,
/// 8 * (n / 8 + 1) for a string or bytes of n bytes); assigning anything that needs more is a
/// ValueError, as in Python. Unlike Python, strings and bytes keep trailing NULs and multi-byte
/// UTF-8 exactly. Like Python, there is no lock: guard concurrent writers with a Lock. It lives in
/// a SharedMemory block (as in Python), which a SharedMemory may open by the list's name. Every
/// operation reports a block that shrank under it (CorruptedError naming it), never returning
/// the zeros of a vanished page as None or storing into memory no one else sees.
class ShareableList {
 public:
  /// The type of an item: one of the scalar or string types a ShareableList holds.
  using value_type = ShareableItem;

  //!Effects: creates an anonymous list holding `items` (fresh "mpp.anon.*" name).
  ShareableList(std::initializer_list<ShareableItem> items, bool track = true)
      : ShareableList(make({}, std::vector<ShareableItem>(items), track)) {}
  /// As above, from a vector.
  explicit ShareableList(const std::vector<ShareableItem>& items, bool track = true)
      : ShareableList(make({}, items, track)) {}

  /// Creates the list `name` holding `items` (ExistsError if taken, InvalidArgument for an
  /// empty name: the anonymous form is ShareableList(items), NoSpaceError if /dev/shm is full).
  static ShareableList create(std::string_view name, const std::vector<ShareableItem>& items,
                              bool track = true) {
    if (name.empty())
      detail::fail<InvalidArgument>(
          "invalid object name '': names must start with \"mpp.\" "
          "(for an anonymous list, use ShareableList(items))");
    return make(name, items, track);
  }
  //!Effects: attaches to the existing list `name` (Python: ShareableList(name=...)).
  //! Waits up to 5 s for a creator that is still filling it.
  //!Throws: NotFoundError, TypeMismatchError (a block that holds no list), CorruptedError (a slot
  //! table that does not fit, or a creator that died while filling it), TimeoutError.
  static ShareableList open(std::string_view name, bool track = true) {
    ShareableList l(detail::BlockHandle::open(name, track));
    try {
      l.wait_filled(std::chrono::seconds(5));
      l.validate();
      l.state_->check_size("open");
    } catch (...) {
      l.state_->leave_name();  // not a list: not ours to remove
      throw;
    }
    return l;
  }

  /// Number of slots (fixed).
  std::size_t size() const { return count_; }
  /// The list's name; kept after close().
  const std::string& name() const {
    if (!record_) detail::fail<ValueError>("ShareableList::name() on a moved-from handle");
    return record_->name;
  }

  //!Returns: the item in slot `i`. Negative indices count from the end, as in Python.
  //!Throws: IndexError, CorruptedError (a slot that does not fit, or a block that shrank under
  //! this process: see SharedMemory::buf()), NoSpaceError.
  ShareableItem get(std::ptrdiff_t i) const {
    ShareableItem v = read(i);
    // A page that vanished under us read as zeros: say so rather than return them.
    state_->check_mapping();
    return v;
  }

  //!Effects: stores `v` in slot `i` (the slot may change kind, as in Python).
  //!Throws: IndexError, ValueError if `v` needs more bytes than the slot reserved,
  //! CorruptedError if the block shrank under this process (the value did not reach the others),
  //! NoSpaceError.
  void set(std::ptrdiff_t i, const ShareableItem& v) {
    auto& d = desc(i);
    std::byte* p = data(d);
    const std::uint64_t cap = d.capacity;
    std::uint64_t len = 0;
    detail::SlotKind kind = detail::SlotKind::none;
    auto put = [&](const void* src, std::uint64_t n, detail::SlotKind k) {
      if (n > cap) {
        state_->check_mapping();  // a capacity read from a vanished page is no ValueError
        detail::fail<ValueError>(
            "ShareableList '{}': item {} has room for {} bytes, the new value needs {} (a slot's "
            "size is fixed when the list is created)",
            name(), i, cap, n);
      }
      if (n != 0) std::memcpy(p, src, static_cast<std::size_t>(n));
      len = n;
      kind = k;
    };
    std::visit(
        [&](const auto& x) {
          using X = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<X, None>) {
            kind = detail::SlotKind::none;
          } else if constexpr (std::is_same_v<X, std::int64_t>) {
            put(&x, 8, detail::SlotKind::int64);
          } else if constexpr (std::is_same_v<X, double>) {
            put(&x, 8, detail::SlotKind::float64);
          } else if constexpr (std::is_same_v<X, bool>) {
            const unsigned char b = x ? 1 : 0;
            put(&b, 1, detail::SlotKind::boolean);
          } else if constexpr (std::is_same_v<X, std::string>) {
            put(x.data(), x.size(), detail::SlotKind::str);
          } else {
            put(x.data(), x.size(), detail::SlotKind::bytes);
          }
        },
        v);
    // Data first, then the tag (release): a reader that sees the new tag sees its bytes.
    std::atomic_ref<std::uint64_t>(d.tag).store((len << 32) | static_cast<std::uint64_t>(kind),
                                                std::memory_order_release);
    // A page that vanished under us took the value into private memory: say so.
    state_->check_mapping();
  }

  /// Reads and writes one slot: `sl[i] = "x"`, `ShareableItem v = sl[i]`.
  class Reference {
   public:
    /// The item now in the slot.
    operator ShareableItem() const { return list_->get(i_); }
    /// The item now in the slot.
    ShareableItem get() const { return list_->get(i_); }
    /// Stores `v` in the slot (see ShareableList::set).
    Reference& operator=(const ShareableItem& v) {
      list_->set(i_, v);
      return *this;
    }
    /// Compares the item in the slot with `v`.
    friend bool operator==(const Reference& r, const ShareableItem& v) {
      return r.list_->get(r.i_) == v;
    }

   private:
    friend class ShareableList;
    Reference(ShareableList* l, std::ptrdiff_t i) : list_(l), i_(i) {}
    ShareableList* list_;
    std::ptrdiff_t i_;
  };
  /// Slot `i` (negative counts from the end); bounds-checked (IndexError).
  Reference operator[](std::ptrdiff_t i) {
    (void)desc(i);
    return Reference(this, i);
  }
  /// The item in slot `i`.
  ShareableItem operator[](std::ptrdiff_t i) const { return get(i); }

  /// Every item, in order.
  std::vector<ShareableItem> to_vector() const {
    std::vector<ShareableItem> out;
    out.reserve(count_);
    for (std::size_t i = 0; i < count_; ++i) out.push_back(get(static_cast<std::ptrdiff_t>(i)));
    return out;
  }
  /// Python's count(value): how many slots hold `v`.
  std::size_t count(const ShareableItem& v) const {
    std::size_t n = 0;
    for (std::size_t i = 0; i < count_; ++i) n += get(static_cast<std::ptrdiff_t>(i)) == v;
    return n;
  }
  /// Python's index(value): the first slot holding `v`. Throws: ValueError if none does.
  std::size_t index(const ShareableItem& v) const {
    for (std::size_t i = 0; i < count_; ++i)
      if (get(static_cast<std::ptrdiff_t>(i)) == v) return i;
    detail::fail<ValueError>("ShareableList '{}': the value is not in the list", name());
  }
  /// Bytes reserved by slot `i` (the most a string or bytes value stored there may take).
  std::size_t capacity(std::ptrdiff_t i) const {
    const std::uint64_t cap = desc(i).capacity;
    state_->check_mapping();  // not a 0 read from a vanished page
    return static_cast<std::size_t>(cap);
  }

  /// Python's repr, also what fmt::format("{}", l) gives:
  /// `ShareableList([1, 2.5, True, None, 'text', b'\\x00'], name='mpp.x')`; a closed handle
  /// gives `\<ShareableList name='mpp.x' closed>`.
  std::string repr() const {
    if (!record_) return "<ShareableList moved from>";
    const std::string n = detail::py_repr_text(record_->name, false);
    if (!state_) return fmt::format("<ShareableList name={} closed>", n);
    std::string out = "ShareableList([";
    for (std::size_t i = 0; i < count_; ++i) {
      if (i != 0) out += ", ";
      out += item_repr(get(static_cast<std::ptrdiff_t>(i)));
    }
    out += fmt::format("], name={})", n);
    return out;
  }

  /// Stops using the list in this handle (see SharedMemory::close).
  void close() noexcept {
    state_.reset();
    count_ = 0;
  }
  //!Effects: removes the name now, after close() too (see SharedMemory::unlink).
  //!Throws: NotFoundError (POSIX) if the name was gone already.
  void unlink() {
    if (!record_) detail::fail<ValueError>("ShareableList::unlink() on a moved-from handle");
    SharedMemory::unlink_block(state_, *record_);
  }

 private:
  explicit ShareableList(std::shared_ptr<detail::BlockHandle> s) noexcept
      : state_(std::move(s)), record_(state_->record()) {}

  // Python's repr of one item.
  static std::string item_repr(const ShareableItem& v) {
    return std::visit(
        [](const auto& x) -> std::string {
          using X = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<X, None>) {
            return "None";
          } else if constexpr (std::is_same_v<X, bool>) {
            return x ? "True" : "False";
          } else if constexpr (std::is_same_v<X, std::int64_t>) {
            return fmt::format("{}", x);
          } else if constexpr (std::is_same_v<X, double>) {
            if (std::isnan(x)) return "nan";
            if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
            std::string t = fmt::format("{}", x);
            if (t.find_first_of(".e") == std::string::npos) t += ".0";  // Python's 1.0, not 1
            return t;
          } else if constexpr (std::is_same_v<X, std::string>) {
            return detail::py_repr_text(x, false);
          } else {
            return detail::py_repr_text(
                std::string_view(reinterpret_cast<const char*>(x.data()), x.size()), true);
          }
        },
        v);
  }

  // get() before its check that the pages read were still the block's.
  ShareableItem read(std::ptrdiff_t i) const {
    auto& d = desc(i);
    const std::uint64_t tag = std::atomic_ref<std::uint64_t>(d.tag).load(std::memory_order_acquire);
    const auto kind = static_cast<detail::SlotKind>(tag & 0xff);
    const std::uint64_t len = tag >> 32;
    const std::byte* p = data(d);
    const std::uint64_t cap = d.capacity;
    auto need = [&](std::uint64_t n) {
      if (n > cap) corrupt(i, "its value needs more bytes than the slot holds");
    };
    switch (kind) {
      case detail::SlotKind::none:
        return None{};
      case detail::SlotKind::int64: {
        need(8);
        std::int64_t v;
        std::memcpy(&v, p, 8);
        return v;
      }
      case detail::SlotKind::float64: {
        need(8);
        double v;
        std::memcpy(&v, p, 8);
        return v;
      }
      case detail::SlotKind::boolean: {
        need(1);
        const auto b = static_cast<unsigned char>(p[0]);
        if (b > 1) corrupt(i, "a bool that is neither 0 nor 1");
        return b == 1;
      }
      case detail::SlotKind::str: {
        need(len);
        return std::string(reinterpret_cast<const char*>(p), static_cast<std::size_t>(len));
      }
      case detail::SlotKind::bytes: {
        need(len);
        return Bytes(p, p + len);
      }
    }
    corrupt(i, "an unknown element kind");
  }

  static ShareableList make(std::string_view name, const std::vector<ShareableItem>& items,
                            bool track) {
    using namespace detail;
    const std::uint64_t n = items.size();
    std::uint64_t data_size = 0;
    for (const auto& it : items) data_size += slot_capacity(it);
    const std::uint64_t table = sizeof(ShareableListHeader) + n * sizeof(SlotDesc);
    ShareableList l(BlockHandle::create(name, table + data_size, track));
    std::byte* p = l.state_->data();
    auto* h = reinterpret_cast<ShareableListHeader*>(p);
    h->count = n;
    h->data_size = data_size;
    auto* d = reinterpret_cast<SlotDesc*>(p + sizeof(ShareableListHeader));
    std::uint64_t off = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
      d[i].offset = off;
      d[i].capacity = slot_capacity(items[i]);
      off += d[i].capacity;
    }
    l.validate();
    for (std::uint64_t i = 0; i < n; ++i) l.set(static_cast<std::ptrdiff_t>(i), items[i]);
    // Published last: an opener that sees the magic sees the whole table and every item.
    std::atomic_ref<std::uint64_t>(h->magic).store(kShareableListMagic, std::memory_order_release);
    return l;
  }

  // An opener waits for the creator's magic; a block that never gets one is not a list.
  void wait_filled(std::chrono::milliseconds wait) {
    using namespace detail;
    auto& b = state("open");
    if (b.size() < sizeof(ShareableListHeader))
      fail<TypeMismatchError>("'{}' is a SharedMemory block of {} bytes, not a ShareableList",
                              b.name(), b.size());
    std::atomic_ref<std::uint64_t> magic(reinterpret_cast<ShareableListHeader*>(b.data())->magic);
    const auto deadline = Deadline::after(wait);
    for (;;) {
      const std::uint64_t m = magic.load(std::memory_order_acquire);
      b.check_size("open");  // a zero read from a vanished page is no "not filled yet"
      if (m == kShareableListMagic) return;
      if (m != 0)
        fail<TypeMismatchError>("'{}' is a SharedMemory block that holds no ShareableList",
                                b.name());
      if (b.live_users() <= 1)
        fail<CorruptedError>(
            "'{}' holds no ShareableList and nobody else has it open: a zeroed "
            "SharedMemory, or a list whose creator died while filling it",
            b.name());
      if (deadline.expired())
        fail<TimeoutError>(
            "'{}' is still not a filled ShareableList after {} ms (its creator "
            "is slow, or it is a zeroed SharedMemory)",
            b.name(), wait.count());
      os::sleep_for(std::chrono::microseconds(200));
    }
  }

  // The slot table is checked once here; every access re-checks its slot, since another process
  // may overwrite the table at any time.
  void validate() {
    using namespace detail;
    auto& b = state("open");
    const std::uint64_t psize = b.size();
    if (psize < sizeof(ShareableListHeader)) corrupt(-1, "the block is smaller than its header");
    const auto* h = reinterpret_cast<const ShareableListHeader*>(b.data());
    const std::uint64_t n = h->count;
    if (n > (psize - sizeof(ShareableListHeader)) / sizeof(SlotDesc))
      corrupt(-1, "its slot count does not fit the block");
    table_ = reinterpret_cast<SlotDesc*>(b.data() + sizeof(ShareableListHeader));
    data_ = b.data() + sizeof(ShareableListHeader) + n * sizeof(SlotDesc);
    data_size_ = psize - sizeof(ShareableListHeader) - n * sizeof(SlotDesc);
    count_ = static_cast<std::size_t>(n);
  }

  detail::SlotDesc& desc(std::ptrdiff_t i) const {
    state("item access").note_use();  // a forked child using the list counts as a user
    const auto n = static_cast<std::ptrdiff_t>(count_);
    const std::ptrdiff_t j = i < 0 ? i + n : i;
    if (j < 0 || j >= n)
      detail::fail<IndexError>("ShareableList '{}': index {} out of range (size {})", name(), i, n);
    return table_[j];
  }

  std::byte* data(const detail::SlotDesc& d) const {
    const std::uint64_t off = d.offset, cap = d.capacity;
    if (off > data_size_ || cap > data_size_ - off)
      corrupt(&d - table_, "its slot lies outside the segment");
    return data_ + off;
  }

  [[noreturn]] void corrupt(std::ptrdiff_t i, std::string_view what) const {
    if (state_) state_->check_mapping();  // zeros from a vanished page: say that instead
    detail::fail<CorruptedError>("ShareableList '{}': item {} is corrupted: {}",
                                 state_ ? state_->name() : std::string("?"), i, what);
  }

  detail::BlockHandle& state(const char* what) const {
    if (!state_)
      detail::fail<ValueError>("ShareableList: {} on a closed handle of '{}'", what,
                               record_ ? record_->name : std::string("(moved from)"));
    return *state_;
  }

  std::shared_ptr<detail::BlockHandle> state_;
  std::shared_ptr<detail::BlockRecord> record_;
  detail::SlotDesc* table_ = nullptr;
  std::byte* data_ = nullptr;
  std::uint64_t data_size_ = 0;
  std::size_t count_ = 0;
};

/// A SharedMemory crosses processes as its name (as Python pickles it): the receiver opens it.
template <>
struct codec<SharedMemory> : detail::NameCodec<SharedMemory> {};

/// A ShareableList crosses processes as its name (as Python pickles it): the receiver opens it.
template <>
struct codec<ShareableList> : detail::NameCodec<ShareableList> {};

}  // namespace mpp

namespace fmt {
/// Formats a SharedMemory as Python's repr: `SharedMemory('mpp.x', size=4096)`.
template <>
struct formatter<mpp::SharedMemory> : formatter<std::string_view> {
  /// Writes `m.repr()`.
  template <class Ctx>
  auto format(const mpp::SharedMemory& m, Ctx& ctx) const {
    return formatter<std::string_view>::format(m.repr(), ctx);
  }
};
/// Formats a ShareableList as Python's repr: `ShareableList([1, 'a', None], name='mpp.x')`.
template <>
struct formatter<mpp::ShareableList> : formatter<std::string_view> {
  /// Writes `l.repr()`.
  template <class Ctx>
  auto format(const mpp::ShareableList& l, Ctx& ctx) const {
    return formatter<std::string_view>::format(l.repr(), ctx);
  }
};
}  // namespace fmt

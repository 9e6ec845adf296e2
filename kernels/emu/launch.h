// launch.h: turns a kernel into a host launcher with cuLaunchKernel's argument convention
// (an array of pointers to the arguments), so the Rust side packs arguments once for both
// devices. build.rs generates one table of these per kernel file.
#pragma once
#include <cstddef>
#include <type_traits>
#include <utility>

namespace emu {
template <typename... A, std::size_t... I>
inline void invoke(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <auto F>
struct Wrap;
template <typename... A, void (*F)(A...)>
struct Wrap<F> {
    static void call(void** args) { invoke(F, args, std::index_sequence_for<A...>{}); }
    // The parameters' count and sizes, so that the host can refuse a launch whose argument
    // list does not match (reading a missing argument would read past the array).
    static constexpr int arity = sizeof...(A);
    static constexpr unsigned char sizes[sizeof...(A) + 1] = {
        static_cast<unsigned char>(sizeof(std::remove_cv_t<std::remove_reference_t<A>>))..., 0};
};

// Mirrored by src/device/emu.rs (EmuKernelEntry).
struct KernelEntry {
    const char* name;
    void (*launch)(void** args);
    int arity;
    const unsigned char* sizes;
};
}  // namespace emu

#define EMU_KERNEL(name) \
    ::emu::KernelEntry { #name, &::emu::Wrap<&name>::call, ::emu::Wrap<&name>::arity, ::emu::Wrap<&name>::sizes }

/* Wine 8 lacks bcryptprimitives.dll!ProcessPrng, which Rust >= 1.78's std
 * imports on Windows; without it every test .exe exits at load with code 53.
 * This stand-in forwards to RtlGenRandom (advapi32!SystemFunction036).
 * Used only by scripts/test-windows to run the test suite under Wine. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}

#include <cstdio>
int main() {
    std::puts("tcpfault " TCPFAULT_VERSION);
    return 0;
}

/*
 * The pod sandbox's "pause" process: holds the pod's namespaces open, reaps orphaned children
 * (it is PID 1 of a pod with a shared PID namespace) and exits cleanly on SIGINT/SIGTERM.
 * Built static (gcc -static) into a FROM-scratch image tagged as kubeadm's pause image.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) { _exit(sig == SIGTERM || sig == SIGINT ? 0 : 2); }

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction stop = {.sa_handler = on_stop};
    struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP};
    if (getpid() != 1) {
        /* not fatal: kubelet always starts it as PID 1, but say so when run by hand */
        static const char msg[] = "pause: not running as PID 1\n";
        (void)!write(2, msg, sizeof msg - 1);
    }
    if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0 ||
        sigaction(SIGCHLD, &child, NULL) < 0) {
        return 1;
    }
    for (;;) {
        pause();
    }
}

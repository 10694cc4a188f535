/* libbpf_log.h: keeps libbpf's recent messages in a buffer for error reports. */
#ifndef XLB_LIBBPF_LOG_H
#define XLB_LIBBPF_LOG_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <bpf/libbpf.h>

#define XLB_LOG_SIZE 65536

static char xlb_log_buf[XLB_LOG_SIZE];
static size_t xlb_log_len;
static int xlb_log_echo;

static int xlb_log_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
	va_list copy;
	int n;

	if (level == LIBBPF_DEBUG && !xlb_log_echo)
		return 0;
	if (xlb_log_echo) {
		va_copy(copy, args);
		vfprintf(stderr, fmt, copy);
		va_end(copy);
	}
	/* when full, keep the newest half: the end of a verifier log says why it refused */
	if (xlb_log_len > XLB_LOG_SIZE / 2) {
		memmove(xlb_log_buf, xlb_log_buf + xlb_log_len - XLB_LOG_SIZE / 4, XLB_LOG_SIZE / 4);
		xlb_log_len = XLB_LOG_SIZE / 4;
	}
	n = vsnprintf(xlb_log_buf + xlb_log_len, XLB_LOG_SIZE - xlb_log_len, fmt, args);
	if (n > 0)
		xlb_log_len += (size_t)n < XLB_LOG_SIZE - xlb_log_len ? (size_t)n : XLB_LOG_SIZE - xlb_log_len - 1;
	return 0;
}

static void xlb_log_install(void)
{
	const char *env = getenv("PYXLB_LIBBPF_DEBUG");

	xlb_log_echo = env && *env && strcmp(env, "0") != 0;
	libbpf_set_print(xlb_log_print);
}

static void xlb_log_clear(void)
{
	xlb_log_len = 0;
	xlb_log_buf[0] = '\0';
}

static const char *xlb_log_text(void)
{
	return xlb_log_buf;
}

#endif /* XLB_LIBBPF_LOG_H */

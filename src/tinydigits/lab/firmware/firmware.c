/* Runs an exported tinydigits model on QEMU's mps2-an385 (Cortex-M3) or mps2-an386
 * (Cortex-M4), bare metal: no C library, output and exit through Arm semihosting. The test
 * images are linked in (raw 28x28 bytes, IMAGE_COUNT of them, from IMAGES_FILE). It prints
 * "predictions: " and one digit per image, then the instructions per image measured with
 * SysTick under `-icount shift=0` (one instruction per virtual nanosecond), calibrated on a
 * loop of known length, then the stack the model used: the bytes below main's frame that its
 * calls overwrote in a region painted with a pattern beforehand (the high-water mark).
 *
 * Built by tinydigits.lab.mcu with -DPREDICT=tinydigits_<model>_predict
 * -DMODEL_HEADER=\"tinydigits_<model>.h\" -DIMAGES_FILE=\"...\" -DIMAGE_COUNT=N. */
#include <stdint.h>

#include MODEL_HEADER

extern uint32_t _data_start, _data_end, _data_load, _bss_start, _bss_end, _stack_top;
extern const unsigned char images[];

__asm__(".section .rodata\n.balign 4\n.global images\nimages:\n.incbin \"" IMAGES_FILE "\"\n.text\n");

#define SYST_CSR (*(volatile uint32_t *)0xE000E010)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018)

static int semihost(int operation, const void *argument)
{
    register int r0 __asm__("r0") = operation;
    register const void *r1 __asm__("r1") = argument;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static void print(const char *text)
{
    semihost(0x04, text); /* SYS_WRITE0 */
}

static void print_number(uint32_t value)
{
    char digits[11];
    int i = 10;
    digits[i] = 0;
    do {
        digits[--i] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0);
    print(digits + i);
}

static void stop(void)
{
    /* SYS_EXIT; on 32-bit Arm its argument is the reason itself: ADP_Stopped_ApplicationExit
     * (QEMU exits with status 0). */
    semihost(0x18, (const void *)0x20026);
    for (;;) {
    }
}

/* SysTick counts down from 2^24 - 1 at the core clock; ticks elapsed since `start`. */
static uint32_t ticks_since(uint32_t start)
{
    return (start - SYST_CVR) & 0xFFFFFF;
}

static uint32_t loop_ticks(uint32_t iterations)
{
    const uint32_t start = SYST_CVR;
    __asm__ volatile("1: subs %0, %0, #1\n bne 1b" : "+r"(iterations) : : "cc");
    return ticks_since(start);
}

#define STACK_PAINT_WORDS 4096 /* 16 KB painted below main's frame: far more than the model uses */
#define STACK_PATTERN 0xC5A3E1F7u

int main(void)
{
    static char line[IMAGE_COUNT + 1];
    uint64_t ticks = 0;
    uint32_t i, calibration;
    uint32_t *sp, *low, *mark;
    /* Paint the stack below this frame (main's own frame stays as it is: the model's calls
     * start at sp); a plain loop, which -fno-tree-loop-distribute-patterns keeps from
     * becoming a call to memset. */
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    low = sp - STACK_PAINT_WORDS;
    for (mark = low; mark < sp; mark++) {
        *(volatile uint32_t *)mark = STACK_PATTERN;
    }
    SYST_RVR = 0xFFFFFF;
    SYST_CVR = 0;
    SYST_CSR = 5; /* enabled, core clock, no interrupt */
    for (i = 0; i < IMAGE_COUNT; i++) {
        const uint32_t start = SYST_CVR;
        line[i] = (char)('0' + PREDICT(images + i * 784));
        ticks += ticks_since(start);
    }
    line[IMAGE_COUNT] = 0;
    for (mark = low; mark < sp && *(volatile uint32_t *)mark == STACK_PATTERN; mark++) {
    }
    print("predictions: ");
    print(line);
    /* 100,000 iterations of two instructions (subs, bne) */
    calibration = loop_ticks(100000);
    print("\nticks: ");
    print_number((uint32_t)(ticks / IMAGE_COUNT));
    print("\ncalibration ticks for 200000 instructions: ");
    print_number(calibration);
    print("\nstack bytes: ");
    print_number((uint32_t)((sp - mark) * sizeof(uint32_t)));
    print("\n");
    stop();
    return 0;
}

void reset_handler(void)
{
    uint32_t *source = &_data_load, *target = &_data_start;
    while (target < &_data_end) {
        *target++ = *source++;
    }
    for (target = &_bss_start; target < &_bss_end; target++) {
        *target = 0;
    }
    main();
    stop();
}

static void fault_handler(void)
{
    print("fault\n");
    stop();
}

__attribute__((section(".vectors"), used)) static const void *const vectors[16] = {
    &_stack_top, (const void *)reset_handler, (const void *)fault_handler, (const void *)fault_handler,
    (const void *)fault_handler, (const void *)fault_handler, (const void *)fault_handler,
};

"""The Linux input codes handoff uses (linux/input-event-codes.h, linux/input.h). Pure data.

The one home for EV_*, SYN_*, REL_*, BTN_* and LED_* numbers; key names
for profiles are in :mod:`handoff.input.keynames`. Checked against
python-evdev's ``evdev.ecodes`` by tests/unit/test_input_codes.py. Must never
import evdev or anything that touches the host.
"""

from __future__ import annotations

import struct

# Event types.
EV_SYN = 0x00
EV_KEY = 0x01
EV_REL = 0x02
EV_LED = 0x11

# EV_SYN codes.
SYN_REPORT = 0
SYN_DROPPED = 3

# EV_REL codes.
REL_X = 0x00
REL_Y = 0x01
REL_HWHEEL = 0x06
REL_WHEEL = 0x08
REL_WHEEL_HI_RES = 0x0B
REL_HWHEEL_HI_RES = 0x0C
#: Hi-res wheel units per detent (the kernel's contract for *_HI_RES).
HI_RES_PER_DETENT = 120

# EV_KEY codes: the button ranges and the mouse buttons.
KEY_MAX = 0x2FF
BTN_MISC = 0x100  # first button code
KEY_OK = 0x160  # keys again from here ...
BTN_TRIGGER_HAPPY = 0x2C0  # ... to here, where buttons resume
BTN_LEFT = 0x110
BTN_RIGHT = 0x111
BTN_MIDDLE = 0x112
BTN_SIDE = 0x113
BTN_EXTRA = 0x114
BTN_FORWARD = 0x115
BTN_BACK = 0x116
BTN_TASK = 0x117
BTN_GEAR_DOWN = 0x150
BTN_GEAR_UP = 0x151

# EV_LED codes.
LED_NUML = 0x00
LED_CAPSL = 0x01
LED_SCROLLL = 0x02

#: ``struct input_event`` as read(2) returns it from /dev/input/eventN: the
#: time as two native longs (``struct timeval``; ``__kernel_ulong_t`` pair
#: on 32-bit userspace with 64-bit time_t, the same size), then __u16 type,
#: __u16 code, __s32 value (linux/input.h, Documentation/input/input.rst).
INPUT_EVENT = struct.Struct("@llHHi")

"""Admin: users (disable, make admin), their keys' limits, backends, invitations."""

from ..web import Page


class AdminHome(Page):
    admin = True


class Users(Page):
    admin = True


class User(Page):
    admin = True


class Key(Page):
    admin = True


class Backends(Page):
    admin = True


class Invites(Page):
    admin = True
